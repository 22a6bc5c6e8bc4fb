"""Column-wise weight mixing for nn.Linear: the operation behind Mixout and DPS Mix.

A mixed Linear computes with

    W_eff = T + R * (W - T) * scale          R: 0/1 per input column (broadcast over rows), T: a target

and its weight receives the gradient `h * R` where h = dL/dW_eff. That is the reference implementations'
rule (DPS and Mixout code): no `scale` factor in the backward pass (methods.md section 3).

R may also be a mask of the weight's own shape (element-wise, DPS Mix's Stage II: `W_eff = S + M*(W-S)*scale`,
gradient `h * M`); a 1-D R is per input column.

W_eff is recomputed in the backward pass instead of being saved, so a mixed Linear keeps no weight-sized
activation between forward and backward: the memory it costs is the target T only (and the tiny column mask).
Evaluation (module.eval()) uses the raw weights W, as the reference code does.

GPT-2's Conv1D (y = x W + b, W stored [in, out]) is mixed through transposed views: the op sees W^T, T^T and an
element-wise mask's transpose, all [out, in], so "input columns" mean the same thing for both layouts.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from sftune.architecture import is_projection, transposed


def _broadcast(mask, weight):
    # A 1-D mask is per input column (broadcast over rows); one of the weight's shape is element-wise.
    return mask if mask.dim() == weight.dim() else mask.unsqueeze(0)


def _effective(weight, target, col_mask, scale):
    # One lerp kernel, target + (R*scale)*(W - target), and one weight-sized result: the addcmul form made two
    # weight-sized tensors and its broadcast over a [1, in] column mask ran ~10x slower on CPU. Where R = 0 the
    # result is the target exactly (lerp with weight 0).
    if col_mask.dim() == weight.dim():
        coeff = col_mask.to(weight.dtype, copy=True).mul_(scale)
    else:
        coeff = (col_mask * scale).to(weight.dtype).unsqueeze(0)
    return torch.lerp(target, weight, coeff)


class _MixedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, target, col_mask, scale):
        w_eff = _effective(weight, target, col_mask, scale)
        cast = None
        if torch.is_autocast_enabled(x.device.type):
            cast = torch.get_autocast_dtype(x.device.type)
        ctx.cast = cast
        xc = x.to(cast) if cast else x
        out = F.linear(xc, w_eff.to(cast) if cast else w_eff, bias.to(cast) if (cast and bias is not None) else bias)
        ctx.save_for_backward(xc, weight, target, col_mask)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, target, col_mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            w_eff = _effective(weight, target, col_mask, ctx.scale)
            grad_x = (grad_out @ w_eff.to(grad_out.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            h = g2.t().float() @ x.reshape(-1, x.shape[-1]).float()  # dL/dW_eff
            grad_w = h.mul_(_broadcast(col_mask, h)).to(weight.dtype)  # reference: h * R, no scale; in place
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class ColumnMix:
    """Patches the forward of the given Linear modules; `set(name, target, col_mask, scale)` turns mixing on
    for one module (until `clear`), `restore()` puts the original forwards back. Parameter names and
    state dicts are unchanged (no wrapper modules)."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.modules = modules
        self.state: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for name, module in modules.items():
            module.forward = types.MethodType(self._make_forward(name), module)

    def _make_forward(self, name: str):
        mix = self

        flip = transposed(self.modules[name])

        def forward(module, x):
            state = mix.state.get(name)
            weight = module.weight.t() if flip else module.weight
            if state is None or not module.training:
                return F.linear(x, weight, module.bias)
            target, col_mask, scale = state
            if flip:
                target = target.t()
                col_mask = col_mask.t() if col_mask.dim() == 2 else col_mask
            return _MixedLinear.apply(x, weight, module.bias, target, col_mask, scale)

        return forward

    def set(self, name: str, target: torch.Tensor, col_mask: torch.Tensor, scale: float) -> None:
        self.state[name] = (target, col_mask, float(scale))

    def clear(self, name: str | None = None) -> None:
        if name is None:
            self.state.clear()
        else:
            self.state.pop(name, None)

    def restore(self) -> None:
        for module in self.modules.values():
            if "forward" in module.__dict__:
                del module.forward
        self.state.clear()


def linear_modules(model: nn.Module, include_head: bool = True, head: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """Every Linear-like module (nn.Linear, GPT-2's Conv1D) by module name (optionally without the task head)."""
    out = {}
    for name, module in model.named_modules():
        if is_projection(module) and (include_head or not f"{name}.".startswith(head or ("\0",))):
            out[name] = module
    return out
