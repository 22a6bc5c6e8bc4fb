import torch
from torch import nn

from sftune.ops.column_mix import ColumnMix


def test_effective_weight_and_reference_gradient_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    t = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.zero_()
    r = torch.tensor([1.0, 0.0, 1.0])  # keep columns 0 and 2
    p = 0.5
    mix = ColumnMix({"lin": lin})
    mix.set("lin", t, r, 1 / (1 - p))
    x = torch.tensor([[1.0, 1.0, 1.0]])
    y = lin(x)
    w_eff = t + r * (w - t) / (1 - p)  # column 1 stays at the target
    assert torch.allclose(w_eff, torch.tensor([[2.0, 1.0, 5.0], [7.0, 1.0, 12.0]]))
    assert torch.allclose(y, x @ w_eff.t())
    y.sum().backward()
    h = torch.ones(2, 1) @ x  # dL/dW_eff for L = sum(y)
    assert torch.equal(lin.weight.grad, h * r)  # only kept columns, no 1/(1-p)
    assert torch.allclose(lin.bias.grad, torch.ones(2))


def test_input_gradient_matches_autograd_through_w_eff():
    torch.manual_seed(1)
    lin = nn.Linear(5, 4)
    t = torch.randn(4, 5)
    r = (torch.rand(5) > 0.4).float()
    mix = ColumnMix({"l": lin})
    mix.set("l", t, r, 1 / 0.6)
    x = torch.randn(2, 3, 5, requires_grad=True)
    lin(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w_eff = t + r * (lin.weight.detach() - t) / 0.6
    (x2 @ w_eff.t() + lin.bias.detach()).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_eval_uses_raw_weights_and_restore_unpatches():
    lin = nn.Linear(3, 2)
    mix = ColumnMix({"l": lin})
    mix.set("l", torch.zeros(2, 3), torch.zeros(3), 2.0)
    x = torch.randn(1, 3)
    assert torch.allclose(lin(x), lin.bias.expand(1, 2))  # all columns dropped: W_eff = target = 0
    lin.eval()
    assert torch.allclose(lin(x), x @ lin.weight.t() + lin.bias)
    lin.train()
    mix.restore()
    assert torch.allclose(lin(x), x @ lin.weight.t() + lin.bias)
    assert "forward" not in lin.__dict__
