"""Selection kernels: exact sampling, top-k, quantile thresholds, Bernoulli and packed masks, flat buffers.

Everything is pure torch and stays on the input tensors' device. Conventions shared by all functions:
budgets are exact (k asked, k returned), ties are broken by lower flat index, index results are int64 in
ascending order, and randomness comes only from the ``torch.Generator`` passed in.
"""

from .flat import FlatBuffer, split_sorted
from .masks import BitMask, bernoulli_dropout_, bernoulli_mask_, bernoulli_threshold, pack_bits, unpack_bits
from .sampling import BlockWeights, uniform_sample_without_replacement, weighted_sample_without_replacement
from .topk import global_threshold, global_threshold_mask, kth_largest_value, top_fraction_mask, topk_indices

__all__ = [
    "FlatBuffer",
    "split_sorted",
    "BitMask",
    "bernoulli_dropout_",
    "bernoulli_mask_",
    "bernoulli_threshold",
    "pack_bits",
    "unpack_bits",
    "BlockWeights",
    "uniform_sample_without_replacement",
    "weighted_sample_without_replacement",
    "global_threshold",
    "global_threshold_mask",
    "kth_largest_value",
    "top_fraction_mask",
    "topk_indices",
]
