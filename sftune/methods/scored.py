"""Shared part of top and stochastic: score every candidate entry by importance into one flat buffer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.config import option
from sftune.methods.budget import BudgetMethod, BudgetOptions
from sftune.methods.importance import ImportanceWeights, InputMeans, squared_importance_
from sftune.select import FlatBuffer


@dataclass
class ScoredOptions(BudgetOptions):
    signed_mu: bool = option(False, "Use the signed mean of the inputs for mu instead of the mean of |x|.")


class ScoredMethod(BudgetMethod):
    Options = ScoredOptions
    flat_scores = True  # keep a float32 buffer of every candidate's I^2 (Top's top-k reads it whole)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        modules = {n.rsplit(".", 1)[0] for n, kind in self.kinds.items()
                   if n in self.candidates and kind in ("linear_weight", "ln_weight")}
        self.means = InputMeans(ctx.model, modules, signed=self.options.signed_mu)
        if self.flat_scores:
            # One preallocated buffer of I^2 for all candidates (4 B per candidate entry), reused every step:
            # no n-sized allocation in the step loop.
            device = next(iter(self.candidates.values())).device
            self.flat = FlatBuffer({n: p.shape for n, p in self.candidates.items()}, torch.float32, device)

    def _means(self) -> dict[str, torch.Tensor | None]:
        """This step's mu per candidate that has one (Linear and LayerNorm weights), reduced across ranks."""
        self.means.all_reduce(self.ctx.accelerator)
        return {name: self.means.pop(name.rsplit(".", 1)[0]) for name in self.candidates
                if self.kinds[name] in ("linear_weight", "ln_weight")}

    def importance(self) -> ImportanceWeights:
        """I^2 of every candidate entry as block-wise weights for the exact sampler (no n-sized buffer)."""
        return ImportanceWeights(self.candidates, self.kinds, self._means())

    def scores(self) -> torch.Tensor:
        """I^2 of every candidate entry, flat, in candidate order."""
        mus = self._means()
        for name, p in self.candidates.items():
            kind, mu = self.kinds[name], mus.get(name)
            view = self.flat.views[name]
            if p.grad is None:
                view.zero_()
            else:
                squared_importance_(view, kind, p, p.grad, mu)
        return self.flat.data
