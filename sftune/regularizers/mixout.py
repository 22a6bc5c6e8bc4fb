"""mixout: every nn.Linear mixes towards its initial weights (Lee et al., ICLR 2020; methods.md section 5).

Each forward draws, per mixed Linear, a Bernoulli(1 - p) mask R over its *input columns* (broadcast over
rows) and computes with

    W_eff = W0 + R * (W - W0) / (1 - p)          gradient to W: h * R   (h = dL/dW_eff, no 1/(1-p))

which is exactly DPS Mix's Stage I, done by the shared `sftune.ops.column_mix.ColumnMix` op. Evaluation uses
the raw W (ColumnMix mixes only modules in train mode). The recipe sets dropout to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.architecture import in_features
from sftune.methods.base import Regularizer, RunContext
from sftune.models import set_dropout_modules
from sftune.ops.column_mix import ColumnMix, linear_modules
from sftune.options import option
from sftune.registry import register_regularizer
from sftune.select.masks import bernoulli_mask_


@register_regularizer
class Mixout(Regularizer):
    name = "mixout"
    summary = "Every nn.Linear mixes towards its initial weights with per-column Bernoulli masks; dropout 0."
    details = ("Lee et al. 2020 (bloodwass/mixout); exactly DPS Mix's Stage I via the shared ColumnMix op: each "
               "forward draws R ~ Bernoulli(1-p) per input column, W_eff = W0 + R*(W-W0)/(1-p), gradient h*R "
               "(the reference backward has no 1/(1-p)). W0 = the weights when training starts (pre-trained, or "
               "re-initialised by reinit). Includes the task head by default, as the authors' example wraps every "
               "nn.Linear (the head mixes towards its random initial weights). Linears whose weight does not "
               "train are skipped (mixing them changes nothing). Dropout is set to 0. Evaluation uses the raw "
               "weights. Grid (DPS appendix D): p in 0.1..0.8.")
    incompatible = ("dps-mix", "r-drop")

    @dataclass
    class Options:
        p: float = option(0.7, "Mix probability: share of columns replaced by W0 each forward (grid 0.1..0.8).",
                          ge=0, lt=1)
        include_head: bool = option(True, "Also mix the task head's Linear layers (towards their initial weights).")
        dropout: float | None = option(0.0, "Dropout probability set on the whole model (the recipe uses 0); "
                                            "none keeps the model's own.", ge=0, le=1)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.dropout_changed = 0
        if self.options.dropout is not None:
            self.dropout_changed = set_dropout_modules(ctx.model, self.options.dropout)
        self.generator = ctx.generator("mixout")
        self.mix: ColumnMix | None = None
        self.targets: dict[str, torch.Tensor] = {}
        self.last_mask: torch.Tensor | None = None

    def on_optimizer(self, optimizer) -> None:
        # Here, not in setup: every plugin has set up (re-init included) and trainability is decided, so W0 is
        # the weights training starts from, and frozen Linears (whose mix would be a no-op) are left out.
        if self.options.p <= 0:
            return
        found = linear_modules(self.ctx.model, include_head=self.options.include_head, head=self.ctx.head)
        modules = {n: m for n, m in found.items() if m.weight.requires_grad}
        if not modules:
            return
        self.targets = {n: m.weight.detach().clone() for n, m in modules.items()}
        self.mix = ColumnMix(modules)
        self.sizes = [in_features(m) for m in modules.values()]

    def before_forward(self, step: int) -> None:
        if self.mix is None:
            return
        p = float(self.options.p)
        first = next(iter(self.targets.values()))
        # One draw for all modules (a fresh buffer each forward: the previous one may still be saved for backward).
        mask = torch.empty(sum(self.sizes), dtype=torch.float32, device=first.device)
        bernoulli_mask_(mask, 1.0 - p, self.generator)
        self.last_mask = mask
        for (name, target), col in zip(self.targets.items(), mask.split(self.sizes)):
            self.mix.set(name, target, col, 1.0 / (1.0 - p))

    def stats(self) -> dict[str, float]:
        if self.last_mask is None:
            return {}
        return {"mixout/kept": float(self.last_mask.mean().item())}

    def summary_stats(self) -> dict:
        return {"mixout": {"p": float(self.options.p), "modules": len(self.targets),
                           "dropout": self.options.dropout, "dropout_places_set": self.dropout_changed}}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()} if hasattr(self, "generator") else {}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state and hasattr(self, "generator"):
            self.generator.set_state(state["generator"])
