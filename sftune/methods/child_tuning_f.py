"""child-tuning-f: task-free Child-Tuning (methods.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.config import option
from sftune.errors import UsageError
from sftune.methods.masking import MaskedMethod
from sftune.registry import register
from sftune.select import bernoulli_mask_


@dataclass
class ChildTuningFOptions:
    p: float = option(0.3, "reserve_p: the share of entries KEPT each step (paper grid 0.2, 0.3, 0.4).")


@register
class ChildTuningF(MaskedMethod):
    name = "child-tuning-f"
    summary = "Child-Tuning F: every step each gradient entry is kept with probability p and rescaled by 1/p."
    details = ("Xu et al. 2021 (PKUnlp-icler/ChildTuning). M ~ Bernoulli(p) element-wise per step for every "
               "parameter outside the head (the head trains densely: methods.md section 0), g <- g * M / p. "
               "In update mode the same rescaled gradient drives an update of the kept entries only. "
               "Bernoulli draws use 16-bit random words (probability resolution 2^-16).")
    Options = ChildTuningFOptions

    def setup(self, ctx) -> None:
        if not 0 < self.options.p <= 1:
            raise UsageError(f"method child-tuning-f: p={self.options.p} must be in (0, 1] (the share kept).")
        super().setup(ctx)
        self.generator = ctx.generator(self.name)
        # One bool buffer per parameter (1 B/entry), refilled in place every step.
        self.buffers = {n: torch.empty(p.shape, dtype=torch.bool, device=p.device) for n, p in self.candidates.items()}

    def candidate(self, name, param) -> bool:
        return self.ctx.groups[name] != "head"

    def select(self, step):
        for name, p in self.candidates.items():
            if p.grad is not None:
                bernoulli_mask_(self.buffers[name], self.options.p, self.generator)
                p.grad.div_(self.options.p)  # the 1/p rescale of the kept entries (dropped ones are zeroed)
        return {n: b for n, b in self.buffers.items() if self.candidates[n].grad is not None}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
