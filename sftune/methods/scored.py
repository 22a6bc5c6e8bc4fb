"""Shared part of top and stochastic: score every candidate entry by importance into one flat buffer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.methods.budget import BudgetMethod, BudgetOptions
from sftune.methods.importance import (
    MU_KINDS,
    ImportanceWeights,
    InputMeans,
    PaddedLayout,
    mu_view,
    squared_importance_,
)
from sftune.options import option


@dataclass
class ScoredOptions(BudgetOptions):
    signed_mu: bool = option(False, "Use the signed mean of the inputs for mu instead of the mean of |x|.")


class ScoredMethod(BudgetMethod):
    Options = ScoredOptions
    # Top reads the scores whole (a float32 buffer of every candidate's I^2, 4 B per entry). Stochastic keeps
    # one only with flat gradients (where per-parameter work is what costs); otherwise its sampler reads the
    # scores block by block (ImportanceWeights) and no n-sized buffer exists.
    flat_scores = True
    score_block = 1  # each parameter's scores padded to a multiple of this (the sampler's block for stochastic)

    def setup(self, ctx) -> None:
        super().setup(ctx)
        modules = {n.rsplit(".", 1)[0] for n, kind in self.kinds.items()
                   if n in self.candidates and kind in MU_KINDS}
        self.means = InputMeans(ctx.model, modules, signed=self.options.signed_mu)
        device = next(iter(self.candidates.values())).device
        self.layout = PaddedLayout([p.numel() for p in self.candidates.values()], self.score_block, device)
        self.flat = None
        if self.flat_scores or self.flat_grads is not None:
            # Preallocated and reused every step: no n-sized allocation in the step loop. Padding stays zero.
            self.flat = torch.zeros(self.layout.numel, dtype=torch.float32, device=device)
            self.views = {n: self.flat[s:s + p.numel()].view(p.shape)
                          for (n, p), s in zip(self.candidates.items(), self.layout.starts)}

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int] | None:
        out = super().state_estimate(mask_mode, flat_grads)
        if out is None or not hasattr(self, "means"):  # setup stopped before the means existed
            return out
        if self.flat_scores or flat_grads:  # a float32 score per candidate (else Stochastic: block-wise)
            out["flat"] = 4 * sum(p.numel() for p in self.candidates.values())
        out["means"] = 4 * sum(self._input_features())  # mu per input feature, float32
        return out

    def _input_features(self) -> list[int]:
        """mu's sizes: one per input feature of each projection (Linear, GPT-2's Conv1D) and norm whose
        entries are candidates (a norm's weight is 1-D: its size)."""
        from sftune.architecture import in_features

        modules = {n.rsplit(".", 1)[0] for n, kind in self.kinds.items() if n in self.candidates and kind in MU_KINDS}
        return [m.weight.shape[0] if m.weight.dim() == 1 else in_features(m)
                for name, m in self.ctx.model.named_modules() if name in modules]

    def _means(self) -> dict[str, torch.Tensor | None]:
        """This step's mu per candidate that has one (Linear and LayerNorm weights), reduced across ranks."""
        self.means.all_reduce(self.ctx.accelerator)
        owners = {name: name.rsplit(".", 1)[0] for name in self.candidates
                  if self.kinds[name] in MU_KINDS}
        means = self.means.pop_all(list(dict.fromkeys(owners.values())))
        return {name: means.get(module) for name, module in owners.items()}

    def importance(self) -> ImportanceWeights:
        """I^2 of every candidate entry as block-wise weights for the exact sampler (no n-sized buffer)."""
        return ImportanceWeights(self.candidates, self.kinds, self._means(), self.layout)

    def scores(self) -> torch.Tensor:
        """I^2 of every candidate entry, flat, in candidate order (each padded to `score_block` entries)."""
        mus = self._means()
        if self.flat_grad() is not None:
            return self._scores_foreach(mus)
        for name, p in self.candidates.items():
            kind, mu = self.kinds[name], mus.get(name)
            view = self.views[name]
            if p.grad is None:
                view.zero_()
            else:
                squared_importance_(view, kind, p, p.grad, mu)
        return self.flat

    def _scores_foreach(self, mus: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The same scores with multi-tensor kernels (the gradients are the flat buffer's views): the same
        operations in the same order as `squared_importance_`, so bitwise the same values. A candidate that
        gets no gradient has a zero gradient view here, hence a zero score, as in the loop above."""
        names = list(self.candidates)
        views = [self.views[n] for n in names]
        grads = [self.flat_grads.buffer.views[n] for n in names]
        torch._foreach_copy_(views, [p.detach() for p in self.candidates.values()])
        torch._foreach_mul_(views, grads)
        scaled = [(self.views[n], mu_view(self.kinds[n], mu.to(torch.float32)))
                  for n, mu in mus.items() if mu is not None]
        if scaled:
            torch._foreach_mul_([v for v, _ in scaled], [m for _, m in scaled])
        return self.flat.square_()
