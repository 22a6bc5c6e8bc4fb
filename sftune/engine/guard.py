"""Divergence: a non-finite loss, gradient norm, weight or model output stops the run (or skips the step).

A diverged run must never look like a result: the loop raises `Diverged` before the non-finite gradients reach
a selector (Top Tuning's scores, DPS's masks) or the optimizer, and before any metric or checkpoint is taken
from non-finite weights. `run.py` records the status `diverged` and the CLI exits with `EXIT_DIVERGED`.
"""

from __future__ import annotations

import math

import torch

EXIT_DIVERGED = 3


class Diverged(Exception):
    """Training produced a non-finite value at `step`; `what` names it (the loss, a weight, ...)."""

    def __init__(self, step: int, what: str, value: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(f"training diverged at step {step}: {what} is {value}. Try a lower learning rate (--lr) or "
                         "tighter gradient clipping (--set train.max_grad_norm=...), or skip such steps with "
                         "--set train.nonfinite=skip.")

    def record(self) -> dict:
        """What manifest.json and results.json keep (the value as text: JSON has no NaN)."""
        return {"step": self.step, "what": self.what, "value": str(self.value)}


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The total L2 norm of the gradients, as clip_grad_norm_ computes it; None when there are none."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


class NonFiniteGuard:
    """mode 'stop' raises Diverged; mode 'skip' tells the loop to drop the step (counted in `skipped`).

    Under fp16 an overflowing gradient is routine: the loss scaler skips that step and lowers its scale, so the
    gradient norm is left to it (`check_grads=False`); the loss, the weights and the outputs are still checked."""

    def __init__(self, mode: str = "stop", check_grads: bool = True):
        self.mode, self.check_grads = mode, check_grads
        self.skipped = 0
        self._bad_loss: float | None = None  # the first non-finite micro-batch loss of the current step
        # The norm step_ok checked (None: not computed). Until a plug-in changes the gradients it is also the
        # norm clipping needs: the loop reuses it instead of a second pass over every gradient.
        self.grad_norm: torch.Tensor | None = None

    def note_loss(self, value: float) -> None:
        if self._bad_loss is None and not math.isfinite(value):
            self._bad_loss = value

    def step_ok(self, step: int, params: list[torch.Tensor]) -> bool:
        """After backward (gradients unscaled, before any plugin reads them): False means skip this step."""
        bad, self._bad_loss, self.grad_norm = self._bad_loss, None, None
        if bad is not None:
            return self._refuse(step, "the loss", bad)
        if not self.check_grads:
            return True
        self.grad_norm = grad_norm(params)
        norm = 0.0 if self.grad_norm is None else float(self.grad_norm)
        if not math.isfinite(norm):
            return self._refuse(step, "the gradient norm", norm)
        return True

    def _refuse(self, step: int, what: str, value: float) -> bool:
        if self.mode == "skip":
            self.skipped += 1
            return False
        raise Diverged(step, what, value)

    @staticmethod
    def check_weights(step: int, model: torch.nn.Module) -> None:
        """Before an evaluation or a checkpoint: a non-finite weight always stops (skipping cannot undo it)."""
        params = list(model.named_parameters())
        if not params or torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all():
            return  # one host read for the whole model
        for name, p in params:
            finite = torch.isfinite(p.detach())
            if not finite.all():
                raise Diverged(step, f"weight {name}", p.detach()[~finite].flatten()[0].item())

    @staticmethod
    def check_outputs(step: int, split: str, logits: torch.Tensor) -> None:
        if not torch.isfinite(logits).all():
            bad = logits[~torch.isfinite(logits)].flatten()[0].item()
            raise Diverged(step, f"the model's output on {split}", bad)
