"""stochastic: Stochastic Tuning, k entries sampled by importance every step (methods.md section 4)."""

import torch

from sftune.methods.masking import FlatIndices
from sftune.methods.scored import ScoredMethod
from sftune.registry import register
from sftune.select import uniform_sample_without_replacement, weighted_sample_without_replacement
from sftune.select.blocks import _BLOCK
from sftune.select.sampling import weighted_sample_keys_


@register
class StochasticTuning(ScoredMethod):
    name = "stochastic"
    summary = ("Stochastic Tuning: k entries sampled without replacement with probability proportional to "
               "I^2, I = |mu * W * g|, every step (k = BitFit count, ~0.08% of RoBERTa-base).")
    details = ("Akbar-Tajari & Pilehvar 2024. Exact weighted sampling without replacement (NumPy choice "
               "semantics) on the device, instead of the authors' NumPy call: inverse-CDF draws read block by block, "
               "or, with flat gradients (CUDA), exponential keys and one exact top-k. mu: mean |input| over batch and "
               "non-padding tokens per input feature (sftune choice; --set method.signed_mu=true for the signed "
               "mean). If fewer than k entries have non-zero importance, all of them are taken and the rest "
               "drawn uniformly among the others (sftune choice). "
               "The mask acts before clipping (the clip sees the masked gradient), in both mask modes "
               "(update mode: sftune choice).")

    # The sampler reads I^2 block by block (ImportanceWeights): no 4 B/candidate buffer, unless the run keeps
    # flat gradients: then one buffer (same padded layout and values), sampled with exponential keys.
    flat_scores = False
    score_block = _BLOCK

    def select(self, step):
        flat = self.flat_grad() is not None
        if flat:
            weights = self.scores()  # a tensor in the padded layout, bitwise ImportanceWeights' values
            positive = int(torch.count_nonzero(weights))
        else:
            weights = self.importance()
            positive = weights.count_positive(at_least=self.k)  # runs the sampler's one pass over n (block sums)
        if positive >= self.k:
            if flat:  # exponential keys over the flat buffer and one exact top-k: a dozen kernels (GPU)
                chosen = weighted_sample_keys_(weights, self.k, self.generator)
            else:  # inverse-CDF draws, block by block: no n-sized buffer, fastest on CPU
                chosen = weighted_sample_without_replacement(weights, self.k, self.generator)
            return FlatIndices(self.layout.unpad(chosen))
        # Not enough non-zero importance (e.g. zero-initialised biases at the first step): take them all and
        # fill the budget uniformly among the rest, so k stays exact. Rare: materialise the scores here.
        dense = weights if isinstance(weights, torch.Tensor) else weights.dense()
        dense = dense.masked_fill(self.layout.padding(), -1.0)  # padding is never chosen
        chosen = torch.nonzero(dense > 0).squeeze(1)
        rest = torch.nonzero(dense == 0).squeeze(1)
        extra = rest[uniform_sample_without_replacement(rest.numel(), self.k - positive, self.generator,
                                                        device=dense.device)]
        return FlatIndices(self.layout.unpad(torch.sort(torch.cat([chosen, extra])).values))
