"""top: Top Tuning, the k most important entries every step (methods.md section 4)."""

from sftune.methods.masking import FlatIndices
from sftune.methods.scored import ScoredMethod
from sftune.registry import register
from sftune.select import topk_indices


@register
class TopTuning(ScoredMethod):
    name = "top"
    summary = "Top Tuning: the k entries of highest importance |mu * W * g|, every step (k = BitFit count)."
    details = ("Akbar-Tajari & Pilehvar 2024. Exact top-k (ties to the lower index) of the importance over all "
               "candidate entries (Linear and LayerNorm parameters; embeddings excluded by default); the head "
               "trains densely. "
               "The mask acts before clipping (the clip sees the masked gradient), in both mask modes "
               "(update mode: sftune choice).")

    def select(self, step):
        return FlatIndices(topk_indices(self.scores(), self.k, self.generator))
