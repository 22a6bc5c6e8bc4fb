"""mixout: W_eff = W0 + R*(W-W0)/(1-p) per input column, gradient h*R, raw weights in eval, seeded masks."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sftune.errors import UsageError
from sftune.methods.base import RunContext
from sftune.models import set_dropout_modules
from sftune.regularizers.mixout import Mixout


def make_ctx(model, seed=0, head=()):
    config = SimpleNamespace(train=SimpleNamespace(seed=seed))
    task = SimpleNamespace(name="rte", is_regression=False)
    return RunContext(model=model, task=task, config=config, accelerator=None, train_loader=None, total_steps=10,
                      groups={}, head=head)


def mixed(model, p=0.5, seed=0, **options):
    plugin = Mixout(Mixout.Options(p=p, **options))
    plugin.setup(make_ctx(model, seed))
    plugin.on_optimizer(None)
    return plugin


def test_effective_weight_and_gradient_for_the_drawn_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    lin = model[0]
    p = 0.5
    plugin = mixed(model, p)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():  # training moved W away from W0
        lin.weight.add_(torch.randn_like(lin.weight))
    w = lin.weight.detach().clone()
    plugin.before_forward(1)
    r = plugin.last_mask.clone()
    assert set(r.tolist()) <= {0.0, 1.0} and r.numel() == 6
    x = torch.randn(5, 6)
    y = model(x)
    w_eff = w0 + r * (w - w0) / (1 - p)  # dropped columns sit at W0, kept ones are rescaled
    assert torch.allclose(y, x @ w_eff.t() + lin.bias, atol=1e-6)
    y.square().sum().backward()
    h = (2 * y).detach().t() @ x  # dL/dW_eff
    assert torch.allclose(lin.weight.grad, h * r, atol=1e-5)  # h*R: no 1/(1-p)
    dropped = r == 0
    assert dropped.any() and (~dropped).any()
    assert torch.all(lin.weight.grad[:, dropped] == 0)
    assert torch.all(lin.weight.grad[:, ~dropped] != 0)


def test_fixed_mask_by_hand():
    model = nn.Sequential(nn.Linear(3, 2))
    lin = model[0]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))  # W0
        lin.bias.zero_()
    plugin = mixed(model, p=0.5)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))  # W
    plugin.before_forward(1)
    name = next(iter(plugin.targets))
    plugin.mix.set(name, plugin.targets[name], torch.tensor([1.0, 0.0, 1.0]), 2.0)  # keep columns 0 and 2
    y = model(torch.ones(1, 3))
    assert torch.allclose(y, torch.tensor([[2.0 + 1.0 + 5.0, 7.0 + 1.0 + 12.0]]))
    y.sum().backward()
    assert torch.equal(lin.weight.grad, torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))


def test_eval_uses_the_raw_weights():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 4))
    plugin = mixed(model, p=0.7)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    plugin.before_forward(1)
    x = torch.randn(2, 8)
    assert not torch.allclose(model(x), x @ model[0].weight.t() + model[0].bias)
    model.eval()
    assert torch.allclose(model(x), x @ model[0].weight.t() + model[0].bias)


def draws(seed, n=3, plugin=None):
    model = nn.Sequential(nn.Linear(64, 4), nn.Linear(4, 2))
    plugin = plugin or mixed(model, p=0.3, seed=seed)
    out = []
    for step in range(n):
        plugin.before_forward(step + 1)
        out.append(plugin.last_mask.clone())
    return out, plugin


def test_masks_are_fresh_each_forward_and_reproducible_from_the_seed():
    a, plugin = draws(seed=7)
    b, _ = draws(seed=7)
    c, _ = draws(seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # a new mask every forward
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # The generator state travels in checkpoints: a resumed plugin continues the same stream.
    state = plugin.state_dict()
    more, _ = draws(seed=7, n=2, plugin=plugin)
    _, resumed = draws(seed=7, n=0)
    resumed.load_state_dict(state)
    again, _ = draws(seed=7, n=2, plugin=resumed)
    assert all(torch.equal(x, y) for x, y in zip(more, again))


def test_p_out_of_range_is_a_usage_error():
    with pytest.raises(UsageError, match=r"mixout\.p must be in \[0, 1\), got 1.0"):
        mixed(nn.Sequential(nn.Linear(2, 2)), p=1.0)


def test_frozen_linears_and_optionally_the_head_are_left_out(tiny_bert):
    from sftune.models import head_prefixes, load_model

    model = load_model(str(tiny_bert), 2)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("bert.encoder.layer.0."))
    plugin = Mixout(Mixout.Options(p=0.3, include_head=False))
    plugin.setup(make_ctx(model, head=head_prefixes(model)))
    plugin.on_optimizer(None)
    names = set(plugin.targets)
    assert "bert.pooler.dense" in names and "bert.encoder.layer.1.attention.self.query" in names
    assert not any(n.startswith("bert.encoder.layer.0.") for n in names)
    assert "classifier" not in names
    # Default: the head mixes too; dropout set to 0 everywhere.
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    plugin = Mixout(Mixout.Options(p=0.3))
    plugin.setup(make_ctx(model, head=head_prefixes(model)))
    plugin.on_optimizer(None)
    assert "classifier" in plugin.targets


def test_set_dropout_reaches_float_attributes():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout, self.activation_dropout, self.layerdrop = 0.1, 0.1, 0.1
            self.drop = nn.Dropout(0.1)

    layer = Layer()
    assert set_dropout_modules(layer, 0.0) == 3
    assert layer.dropout == layer.activation_dropout == layer.drop.p == 0.0
    assert layer.layerdrop == 0.1  # not a dropout probability


def test_mixout_trains_end_to_end(train_with_reg):
    out, train = train_with_reg("mixout:p=0.3")
    results = json.loads((out / "results.json").read_text())
    assert results["mixout"]["modules"] > 10 and results["mixout"]["dropout"] == 0.0
    kept = [r["mixout/kept"] for r in train]
    assert len(kept) == 3 and all(0.5 < k < 0.9 for k in kept)
    assert "mixout" in (out / "config.yaml").read_text()
