"""r3f: lambda * (KL(p||p~) + KL(p~||p)) between the clean and the noised-embedding predictions."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sftune.errors import UsageError
from sftune.methods.base import RunContext
from sftune.models import set_dropout_modules
from sftune.regularizers.r3f import R3F, symmetric_kl


def make_ctx(model, seed=0, regression=False, task="rte"):
    config = SimpleNamespace(train=SimpleNamespace(seed=seed))
    return RunContext(model=model, task=SimpleNamespace(name=task, is_regression=regression), config=config,
                      accelerator=None, train_loader=None, total_steps=10, groups={}, head=())


def test_symmetric_kl_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.5, -0.5], [2.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    total = 0.0
    for la, lb in zip(a.tolist(), b.tolist()):
        p = [math.exp(x) / sum(math.exp(y) for y in la) for x in la]
        q = [math.exp(x) / sum(math.exp(y) for y in lb) for x in lb]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert symmetric_kl(a, b).item() == pytest.approx(total / 3, rel=1e-6)  # batchmean
    assert symmetric_kl(a, b, "sum").item() == pytest.approx(total, rel=1e-6)
    assert symmetric_kl(a, a).item() == 0.0


@pytest.fixture
def bert(tiny_bert):
    from sftune.models import load_model

    model = load_model(str(tiny_bert), 2)
    set_dropout_modules(model, 0.0)  # deterministic forwards: only the noise differs
    return model


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (3, 9), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_term_equals_lambda_times_symmetric_kl_of_the_inputs_embeds_forward(bert, noise):
    plugin = R3F(R3F.Options(noise=noise, sigma=0.5, lambda_=2.0))
    ctx = make_ctx(bert, seed=3)
    plugin.setup(ctx)
    b = batch()
    clean = bert(**b)
    term = plugin.extra_loss(bert, b, clean)
    # By hand: the same draws from a generator with the same seed, added to E(input_ids), through inputs_embeds.
    g = ctx.generator("r3f")
    emb = bert.get_input_embeddings()(b["input_ids"])
    z = torch.empty_like(emb)
    z.uniform_(-0.5, 0.5, generator=g) if noise == "uniform" else z.normal_(0.0, 0.5, generator=g)
    noised = bert(inputs_embeds=emb + z, attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    expected = 2.0 * symmetric_kl(clean.logits, noised.logits)
    assert term.item() == pytest.approx(expected.item(), rel=1e-4)
    assert term.item() > 0
    assert plugin.stats()["r3f/kl"] == pytest.approx(expected.item() / 2.0, rel=1e-4)
    term.backward()  # differentiable through both forwards
    assert bert.classifier.weight.grad is not None


def test_zero_noise_gives_zero(bert):
    plugin = R3F(R3F.Options(sigma=0.0))
    plugin.setup(make_ctx(bert))
    b = batch()
    assert plugin.extra_loss(bert, b, bert(**b)).item() == 0.0


def test_noise_reaches_bart_through_its_encoder_embeddings(tiny_models):
    from sftune.models import load_model

    model = load_model(str(tiny_models["bart"]), 2)
    set_dropout_modules(model, 0.0)
    plugin = R3F(R3F.Options(sigma=1.0))
    plugin.setup(make_ctx(model))
    ids = torch.tensor([[0, 50, 60, 70, 2], [0, 80, 90, 100, 2]])
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}
    assert plugin.extra_loss(model, b, model(**b)).item() > 0


def test_regression_task_is_a_one_line_error(bert):
    with pytest.raises(UsageError, match="stsb is a regression task"):
        R3F().setup(make_ctx(bert, regression=True, task="stsb"))


def test_lambda_key_reads_naturally():
    from sftune.config import build

    tree = {"model": {"name": "x"}, "task": "rte", "regs": ["r3f:lambda=0.5,noise=normal"]}
    cfg = build(tree)
    assert cfg.to_dict()["regs"] == [{"name": "r3f", "noise": "normal", "sigma": 1e-5, "lambda_": 0.5}]


def test_r3f_trains_end_to_end(train_with_reg):
    out, train = train_with_reg("r3f:lambda_=1,noise=normal")
    assert all(r["r3f/kl"] >= 0 for r in train)
    assert json.loads((out / "results.json").read_text())["steps"] == 3
