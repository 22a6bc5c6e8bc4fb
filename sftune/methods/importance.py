"""Importance scores of Stochastic and Top Tuning: I = |mu * W * g| (methods.md section 4).

`mu` for an nn.Linear is the mean of |x_j| over the batch and the non-padding tokens of its input, one value
per input feature, broadcast over output rows (sftune choice; `signed` uses the signed mean). For biases the
input is 1 (I = |b * g|); a LayerNorm weight uses mu = mean |x_hat| of its normalised input; a LayerNorm
bias uses I = |beta * g|. mu is the mean over every non-padding token of the optimizer step: with gradient
accumulation and across the ranks of a multi-process run, token-weighted sums and counts are added up, so
mu is the same however the step's batch is split.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn


class InputMeans:
    """Forward hooks that keep the running mean |input| per feature of chosen Linear and LayerNorm modules."""

    def __init__(self, model: nn.Module, module_names: set[str], signed: bool = False):
        self.signed = signed
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.attention_mask: torch.Tensor | None = None
        self._last: tuple | None = None  # (weak ref to the last input, its version and kind, sum, count)
        self.handles = [model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)]
        for name, module in model.named_modules():
            if name in module_names:
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _capture_mask(self, module, args, kwargs):
        self.attention_mask = kwargs.get("attention_mask")
        self._last = None  # a new forward pass: never reuse a mean across passes

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not module.training or not torch.is_grad_enabled():
                return
            # Query, key and value read the same tensor object: compute its mean once and reuse it. A weak
            # reference (not an address, which a freed tensor's successor may reuse) identifies it.
            source, kind = inputs[0], isinstance(module, nn.LayerNorm)
            last = self._last
            if last is not None and last[0]() is source and last[1] == (source._version, kind):
                self._add(name, last[2], last[3])
                return
            x = source.detach()
            if isinstance(module, nn.LayerNorm):
                x = F.layer_norm(x.float(), module.normalized_shape, None, None, module.eps)
            x = x.float() if self.signed else x.float().abs()
            mask = self.attention_mask
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                w = mask.to(x.dtype).reshape(1, -1)  # token weights: a matrix-vector product, no x-sized temporary
                total, count = (w @ x.reshape(w.shape[1], -1)).squeeze(0), w.sum()
            else:  # pooled [batch, features] inputs, or shapes that are not [batch, tokens, features]
                flat = x.reshape(-1, x.shape[-1])
                total, count = flat.sum(0), torch.tensor(float(flat.shape[0]), device=x.device)
            self._last = (weakref.ref(source), (source._version, kind), total, count)
            self._add(name, total, count)

        return hook

    def _add(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        if name in self.sums:
            self.sums[name] = self.sums[name] + total
            self.counts[name] = self.counts[name] + count
        else:
            self.sums[name], self.counts[name] = total, count

    def all_reduce(self, accelerator) -> None:
        """Add up the pending sums and token counts of all ranks (one collective), so every rank scores alike."""
        if accelerator.num_processes < 2 or not self.sums:
            return
        names = sorted(self.sums)
        flat = torch.cat([torch.cat([self.sums[n], self.counts[n].view(1)]) for n in names])
        flat = accelerator.reduce(flat, reduction="sum")
        offset = 0
        for n in names:
            size = self.sums[n].numel()
            self.sums[n], self.counts[n] = flat[offset:offset + size], flat[offset + size]
            offset += size + 1

    def pop(self, name: str) -> torch.Tensor | None:
        """The mean over the micro-batches since the last pop (None if the module did not run)."""
        if name not in self.sums:
            return None
        out = self.sums.pop(name) / self.counts.pop(name).clamp_min(1)
        return out.abs() if not self.signed else out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def squared_importance_(out: torch.Tensor, kind: str, param: torch.Tensor, grad: torch.Tensor,
                        mu: torch.Tensor | None) -> torch.Tensor:
    """Write I^2 = (mu * W * g)^2 (sampling weights are proportional to I^2) into `out`, in place."""
    torch.mul(param.detach(), grad, out=out)
    if kind in ("linear_weight", "ln_weight") and mu is not None:
        out.mul_(mu.to(out.dtype) if kind == "ln_weight" else mu.to(out.dtype).unsqueeze(0))
    return out.square_()
