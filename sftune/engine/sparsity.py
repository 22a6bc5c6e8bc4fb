"""Measured sparsity: the share of entries selected and the share that actually changed, per module group.

Selected counts come from the method (all trainable entries for dense methods). Changed counts compare
the trainable weights before and after the optimizer step, on logged steps only: that costs a transient
copy of the trainable weights on those steps, and it is what shows that masking gradients under AdamW
(grad mode) still moves unselected entries.
"""

from __future__ import annotations

import torch
from torch import nn

from sftune.architecture import inactive_copies
from sftune.models import GROUPS


class SparsityMeter:
    def __init__(self, model: nn.Module, groups: dict[str, str]):
        copies = inactive_copies(model)  # LoRA's frozen original head: not part of the model that trains
        self.params = {n: p for n, p in model.named_parameters() if n not in copies}
        self.groups = groups
        self.totals = {g: 0 for g in GROUPS}
        for name, p in self.params.items():
            self.totals[groups[name]] += p.numel()
        self.total = sum(self.totals.values())
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.changed: dict[str, torch.Tensor] = {}

    def take_snapshot(self) -> None:
        self.snapshot = {n: p.detach().clone() for n, p in self.params.items() if p.requires_grad}

    def measure_changed(self) -> None:
        if self.snapshot is None:
            return
        self.changed = {n: (self.params[n].detach() != before).sum() for n, before in self.snapshot.items()}
        self.snapshot = None

    def record(self, selected: dict[str, torch.Tensor | int]) -> dict[str, float]:
        """Shares of all entries (and per group) selected in, and changed by, the last step."""
        out = {}
        for key, counts in (("selected", selected), ("changed", self.changed)):
            if not counts:
                continue
            per_group = {g: 0.0 for g in GROUPS}
            values = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in counts.values()]).tolist()
            for name, value in zip(counts, values):
                per_group[self.groups[name]] += value
            out[key] = sum(per_group.values()) / self.total
            for g, value in per_group.items():
                if self.totals[g]:
                    out[f"{key}/{g}"] = value / self.totals[g]
        self.changed = {}
        return out

    def dense_selected(self) -> dict[str, int]:
        return {n: p.numel() for n, p in self.params.items() if p.requires_grad}
