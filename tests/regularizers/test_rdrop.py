"""r-drop: L1 + extra = (L1 + L2)/2 + alpha * (KL(p1||p2) + KL(p2||p1))/2 (regression: + alpha * MSE(y1, y2))."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sftune.methods.base import RunContext
from sftune.regularizers.rdrop import RDrop, rdrop_terms


def make_ctx(model, regression=False):
    config = SimpleNamespace(train=SimpleNamespace(seed=0))
    return RunContext(model=model, task=SimpleNamespace(name="stsb" if regression else "rte", is_regression=regression),
                      config=config, accelerator=None, train_loader=None, total_steps=10, groups={}, head=())


def kl(la, lb):
    p = [math.exp(x) / sum(math.exp(y) for y in la) for x in la]
    q = [math.exp(x) / sum(math.exp(y) for y in lb) for x in lb]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_classification_terms_by_hand():
    a = torch.tensor([[1.0, -1.0], [0.3, 0.2]])
    b = torch.tensor([[0.5, 0.0], [0.3, 0.2]])
    l1, l2 = torch.tensor(0.7), torch.tensor(0.4)
    sym = [0.5 * (kl(x, y) + kl(y, x)) for x, y in zip(a.tolist(), b.tolist())]
    extra, consistency = rdrop_terms(a, b, l1, l2, alpha=3.0, regression=False)
    assert consistency.item() == pytest.approx(sum(sym) / 2, rel=1e-6)
    assert (l1 + extra).item() == pytest.approx((0.7 + 0.4) / 2 + 3.0 * sum(sym) / 2, rel=1e-6)
    _, summed = rdrop_terms(a, b, l1, l2, alpha=3.0, regression=False, reduction="sum")
    assert summed.item() == pytest.approx(sum(sym), rel=1e-6)
    extra, consistency = rdrop_terms(a, a.clone(), l1, l1, alpha=3.0, regression=False)
    assert extra.item() == 0.0 and consistency.item() == 0.0


def test_regression_terms_by_hand():
    y1 = torch.tensor([[1.0], [2.0], [0.0]])
    y2 = torch.tensor([[1.5], [2.0], [1.0]])
    extra, mse = rdrop_terms(y1, y2, torch.tensor(1.0), torch.tensor(3.0), alpha=0.5, regression=True)
    assert mse.item() == pytest.approx((0.25 + 0 + 1) / 3)
    assert (1.0 + extra).item() == pytest.approx(2.0 + 0.5 * 1.25 / 3)


@pytest.fixture
def bert(tiny_bert):
    from sftune.models import load_model

    return load_model(str(tiny_bert), 2, dropout=0.0)


def batch(labels):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (4, 8), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": labels}


def test_zero_when_dropout_is_off(bert):
    plugin = RDrop(RDrop.Options(alpha=5.0, dropout=0.0))
    plugin.setup(make_ctx(bert))
    bert.train()
    b = batch(torch.tensor([0, 1, 1, 0]))
    assert plugin.extra_loss(bert, b, bert(**b)).item() == 0.0


def test_total_equals_the_objective_with_dropout_on(bert):
    plugin = RDrop(RDrop.Options(alpha=1.0))
    plugin.setup(make_ctx(bert))
    assert all(m.p == 0.1 for m in bert.modules() if isinstance(m, nn.Dropout))  # model had 0: set to 0.1
    bert.train()
    b = batch(torch.tensor([0, 1, 1, 0]))
    first = bert(**b)
    seen = []

    def model(**kw):
        seen.append(bert(**kw))
        return seen[-1]

    extra = plugin.extra_loss(model, b, first)
    second = seen[0]
    assert not torch.allclose(first.logits, second.logits)  # another dropout mask
    per_example = [0.5 * (kl(x, y) + kl(y, x)) for x, y in zip(first.logits.tolist(), second.logits.tolist())]
    expected = 0.5 * (first.loss + second.loss).item() + 1.0 * sum(per_example) / 4
    assert (first.loss + extra).item() == pytest.approx(expected, rel=1e-5)
    assert sum(per_example) > 0
    (first.loss + extra).backward()
    assert bert.classifier.weight.grad is not None


def test_regression_uses_mse_between_the_two(tiny_bert):
    from sftune.models import load_model

    model = load_model(str(tiny_bert), 1)
    plugin = RDrop(RDrop.Options(alpha=2.0))
    plugin.setup(make_ctx(model, regression=True))
    model.train()
    b = batch(torch.tensor([0.5, 1.0, 3.0, 4.5]))
    first = model(**b)
    seen = []
    extra = plugin.extra_loss(lambda **kw: seen.append(model(**kw)) or seen[-1], b, first)
    y1, y2 = first.logits.reshape(-1), seen[0].logits.reshape(-1)
    expected = 0.5 * (first.loss + seen[0].loss) + 2.0 * (y1 - y2).square().mean()
    assert (first.loss + extra).item() == pytest.approx(expected.item(), rel=1e-5)
    assert "r-drop/mse" in plugin.stats()


def test_rdrop_trains_end_to_end(train_with_reg):
    _, train = train_with_reg("r-drop:alpha=0.5")
    assert all(r["r-drop/kl"] > 0 for r in train)
