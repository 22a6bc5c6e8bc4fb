"""reinit: the top L layers (and the pooler) get the model's own initialisation; everything below is untouched."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sftune.errors import UsageError
from sftune.methods.base import RunContext
from sftune.models import layer_stack, load_model
from sftune.regularizers.reinit import Reinit


def make_ctx(model, seed=0):
    config = SimpleNamespace(train=SimpleNamespace(seed=seed))
    return RunContext(model=model, task=SimpleNamespace(name="rte", is_regression=False), config=config,
                      accelerator=None, train_loader=None, total_steps=10, groups={}, head=())


def trained_looking(path):
    """The tiny model, perturbed like a trained one (biases non-zero, LayerNorm != 1, larger weights), so the
    re-initialised entries are recognisable."""
    model = load_model(str(path), 2)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_top_layer_and_pooler_follow_the_initialiser_lower_layers_untouched(tiny_bert):
    model = trained_looking(tiny_bert)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugin = Reinit(Reinit.Options(L=1))
    plugin.setup(make_ctx(model))
    after = dict(model.named_parameters())
    std = model.config.initializer_range
    top = [n for n in after if n.startswith(("bert.encoder.layer.1.", "bert.pooler."))]
    weights = []
    for n in top:
        assert not torch.equal(before[n], after[n]), n
        module = model.get_submodule(n.rsplit(".", 1)[0])
        if isinstance(module, nn.LayerNorm):
            expected = 1.0 if n.endswith("weight") else 0.0
            assert torch.all(after[n] == expected), n
        elif n.endswith("bias"):
            assert torch.all(after[n] == 0), n
        else:
            weights.append(after[n].detach().reshape(-1))
    pooled = torch.cat(weights)
    assert pooled.numel() > 5000
    assert abs(pooled.mean().item()) < 0.002
    assert pooled.std().item() == pytest.approx(std, rel=0.05)
    for n in after:
        if n not in top:
            assert torch.equal(before[n], after[n]), n  # embeddings, layer 0 and the head untouched
    assert plugin.summary_stats()["reinit"]["modules"] == ["bert.encoder.layer.1", "bert.pooler"]


def test_same_seed_same_weights_and_the_global_rng_is_not_consumed(tiny_bert):
    a, b, c = (trained_looking(tiny_bert) for _ in range(3))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    Reinit(Reinit.Options(L=2, pooler=False)).setup(make_ctx(a, seed=1))
    assert torch.equal(torch.get_rng_state(), state)
    Reinit(Reinit.Options(L=2, pooler=False)).setup(make_ctx(b, seed=1))
    Reinit(Reinit.Options(L=2, pooler=False)).setup(make_ctx(c, seed=2))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    pa, pb, pc = (dict(m.named_parameters())[name] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert torch.equal(dict(a.named_parameters())["bert.pooler.dense.weight"],
                       dict(b.named_parameters())["bert.pooler.dense.weight"])


def test_more_layers_than_the_model_has_is_a_usage_error(tiny_bert):
    with pytest.raises(UsageError, match="has 2 layers"):
        Reinit(Reinit.Options(L=3)).setup(make_ctx(load_model(str(tiny_bert), 2)))


def test_layer_stacks_of_every_family(tiny_models):
    names = {f: [n for n, _ in layer_stack(load_model(str(p), 2))] for f, p in tiny_models.items()}
    assert names["bert"] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert names["roberta"] == ["roberta.encoder.layer.0", "roberta.encoder.layer.1"]
    assert names["electra"] == ["electra.encoder.layer.0", "electra.encoder.layer.1"]
    assert names["deberta-v2"] == ["deberta.encoder.layer.0", "deberta.encoder.layer.1"]
    # BART classifies from the decoder: the decoder's layers are the top of the stack.
    assert names["bart"] == ["model.encoder.layers.0", "model.encoder.layers.1",
                             "model.decoder.layers.0", "model.decoder.layers.1"]
    with pytest.raises(UsageError, match="cannot find the transformer layers"):
        layer_stack(nn.Sequential(nn.Linear(2, 2)))


def test_bart_reinit_touches_only_the_top_decoder_layer(tiny_models):
    model = trained_looking(tiny_models["bart"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Reinit(Reinit.Options(L=1)).setup(make_ctx(model))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("model.decoder.layers.1.") for n in changed)


def test_reinit_trains_end_to_end(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "reinit"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--reg", "reinit:L=1",
                          "--max-steps", "2", "--batch-size", "8", "--set", "data.train_size=16",
                          "--set", "data.eval_batch_size=128", "-o", out)
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())["reinit"]["modules"] == ["bert.encoder.layer.1",
                                                                                    "bert.pooler"]
