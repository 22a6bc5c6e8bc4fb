"""The shared machinery of mask-based methods: which parameters are candidates, how a step's masks are
applied in each mask mode, and what is counted.

A subclass implements

    candidate(name, param) -> bool     entries of these parameters are selected; the rest train densely
    select(step) -> dict[name, mask]   this step's masks: a bool tensor shaped like the parameter, or a 1-D
                                       int64 tensor of flat indices. A candidate missing from the dict
                                       trains densely this step (DPS Stage I).

and this base class applies them (methods.md section 0):

* `grad` mode (reference): `g <- g * M` after backward and before clipping and AdamW, as the authors' code
  does. AdamW's momentum and decoupled weight decay still move unselected entries.
* `update` mode (exact): the masks go to `MaskedAdamW`, which updates only selected entries (their moments,
  bias correction and weight decay only), so exactly the selected entries change. The gradient is masked
  too, so clipping sees the same norm as in grad mode.
"""

from __future__ import annotations

from typing import Any

import torch

from sftune.methods.base import Method, RunContext


class MaskedMethod(Method):
    def candidate(self, name: str, param: torch.nn.Parameter) -> bool:
        raise NotImplementedError

    def select(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.params = {n: p for n, p in ctx.model.named_parameters()}
        self.candidates = {n: p for n, p in self.params.items() if self.candidate(n, p)}
        self.masks: dict[str, torch.Tensor] = {}
        self.optimizer = None

    def on_optimizer(self, optimizer) -> None:
        if self.mask_mode == "update":
            if not hasattr(optimizer, "set_mask"):
                raise RuntimeError("update mode needs sftune.optim.MaskedAdamW")
            self.optimizer = optimizer

    def after_backward(self, step: int) -> None:
        self.masks = self.select(step)
        # Both modes zero the gradient outside the mask before clipping, so the clipping norm is the
        # reference's (the norm of the masked gradient).
        for name, mask in self.masks.items():
            grad = self.candidates[name].grad
            if grad is not None:
                apply_mask_(grad, mask)
        if self.mask_mode == "update":
            for name, p in self.candidates.items():
                if p.requires_grad:
                    self.optimizer.set_mask(p, self.masks.get(name))

    # ------------------------------------------------------------------------------------------ counts
    def selected_counts(self) -> dict[str, torch.Tensor | int]:
        """Entries selected in the last step, per parameter (on the device; summed by the caller)."""
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if not p.requires_grad:
                continue
            mask = self.masks.get(name) if name in self.candidates else None
            if mask is None:
                out[name] = p.numel()
            elif mask.dtype == torch.bool:
                out[name] = mask.sum()
            else:
                out[name] = mask.numel()
        return out


def apply_mask_(grad: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the gradient outside the mask, in place."""
    if mask.dtype == torch.bool:
        grad.mul_(mask.to(grad.dtype))  # a float multiply is much faster than the bool-tensor path
        return
    flat = grad.view(-1)
    kept = flat.index_select(0, mask)
    flat.zero_()
    flat.index_copy_(0, mask, kept)
