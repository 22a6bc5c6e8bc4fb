"""random: Random Tuning, k entries drawn uniformly every step (methods.md section 1)."""

from sftune.methods.budget import BudgetMethod
from sftune.methods.masking import FlatIndices
from sftune.registry import register
from sftune.select import uniform_sample_without_replacement


@register
class RandomTuning(BudgetMethod):
    name = "random"
    summary = "Random Tuning: k entries chosen uniformly at random, re-drawn every step (k = BitFit count)."
    details = ("Baseline of the Stochastic Tuning paper (Akbar-Tajari & Pilehvar 2024). Exact uniform sampling "
               "of k distinct entries among the candidates (Linear and LayerNorm parameters; embeddings "
               "excluded by default); the head trains densely. "
               "The mask acts before clipping (the clip sees the masked gradient), in both mask modes "
               "(update mode: sftune choice).")

    def select(self, step):
        n = sum(p.numel() for p in self.candidates.values())
        device = next(iter(self.candidates.values())).device
        return FlatIndices(uniform_sample_without_replacement(n, self.k, self.generator, device=device))
