"""The keys method of exact weighted sampling without replacement (Efraimidis-Spirakis exponential keys).

See ``sampling.py`` for the two methods and their exactness; ``weighted_sample_keys_`` is the variant that
writes the keys over a flat weight buffer (the GPU's fast path).
"""

from __future__ import annotations

import torch

from .topk import _k_largest_positions, topk_indices

# Lower end of the uniform draw for the keys method: torch's float32 uniform_ is a multiple of 2^-24 in
# [0, 1); drawing from [2^-25, 1) moves only the value 0 (to 2^-25, its bucket's midpoint) so log(U) is
# finite, a positive weight never gets the -inf key reserved for zero weights, and U < 1 keeps
# 0/0 = NaN out for zero weights (log(U) < 0 strictly, so log(U)/0 = -inf).
_U_LOW = 2.0**-25


def _sample_keys(
    w: torch.Tensor,
    k: int,
    generator: torch.Generator,
    chunk_size: int,
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """Top-k of ``log(U)/w`` under (key desc, index asc), streamed over chunks.

    The selection rule is a fixed total order, so with the same keys the result does not depend on the
    chunking. On CPU the keys are the same too (torch's mt19937 stream is consumed one float per entry, in
    index order), so the result is independent of ``chunk_size``. On CUDA the Philox generator advances per
    kernel launch, so different chunk sizes give different (equally exact) samples.
    ``exclude``: sorted indices that get key -inf (used to continue a partially drawn sample).
    """
    n = w.numel()
    # A chunk at least as large as k keeps each merge at O(chunk + k) and the number of merges small.
    chunk = max(int(chunk_size), k, 1)
    keys_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    buf = torch.empty(min(chunk, n), dtype=keys_dtype, device=w.device)
    best_keys = torch.empty(0, dtype=keys_dtype, device=w.device)
    best_idx = torch.empty(0, dtype=torch.long, device=w.device)
    thr = None  # k-th largest key so far, once k candidates exist
    for start in range(0, n, chunk):
        L = min(chunk, n - start)
        keys = buf[:L]
        keys.uniform_(_U_LOW, 1.0, generator=generator)
        keys.log_()
        keys.div_(w[start : start + L])  # w = 0 -> -inf (log U < 0), w > 0 -> finite, never NaN
        if exclude is not None and exclude.numel():
            lo, hi = torch.searchsorted(exclude, torch.tensor([start, start + L], device=w.device)).tolist()
            if hi > lo:
                keys.index_fill_(0, exclude[lo:hi] - start, float("-inf"))
        if thr is None:
            cand = torch.arange(L, device=w.device)
        else:
            # Strictly greater: an entry of this chunk that ties the current k-th key has a larger index
            # and therefore loses the tie.
            cand = (keys > thr).nonzero().squeeze(1)
            if cand.numel() == 0:
                continue
        mk = torch.cat([best_keys, keys[cand]])
        mi = torch.cat([best_idx, cand + start])  # stays sorted by index: old indices < chunk indices
        if mk.numel() > k:
            pos = _k_largest_positions(mk, k)
            mk, mi = mk[pos], mi[pos]
        best_keys, best_idx = mk, mi
        if best_keys.numel() == k:
            thr = best_keys.min()
    # One host sync on O(k) data to detect "fewer than k positive weights" (their keys are -inf).
    if bool(torch.isneginf(best_keys).any()):
        raise ValueError(
            f"fewer than k={k} entries have positive weight (excluding already drawn ones); "
            "cannot draw k distinct indices without replacement"
        )
    return best_idx


def weighted_sample_keys_(w: torch.Tensor, k: int, generator: torch.Generator,
                          chunk_size: int = 1 << 24) -> torch.Tensor:
    """The keys method for weights already in one flat float tensor, written over ``w`` (its values are
    destroyed): each chunk's keys ``log(U) / w`` replace the weights in place, then one exact top-k
    (``topk_indices``: the k largest keys, ties to the lower index, the rule ``_sample_keys`` applies). The
    same sample as ``method="keys"`` with the same ``chunk_size`` and generator state, in a dozen kernels and
    no merge loop; the only temporary is one chunk of uniforms. This is the GPU's fast exact sampler when a
    flat buffer of the weights exists (Stochastic Tuning with flat gradients): a few passes over n at memory
    speed against the cdf method's rounds of small kernels. Ascending int64 indices.
    """
    w = w.reshape(-1)
    n = w.numel()
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw k={k} distinct indices out of n={n}")
    chunk = max(1, min(int(chunk_size), n))
    u = torch.empty(chunk, dtype=torch.float64 if w.dtype == torch.float64 else torch.float32, device=w.device)
    for start in range(0, n, chunk):
        L = min(chunk, n - start)
        uc = u[:L].uniform_(_U_LOW, 1.0, generator=generator).log_()
        torch.div(uc, w[start : start + L], out=w[start : start + L])  # w = 0 -> -inf, never NaN
    del u
    idx = topk_indices(w, k, generator)
    if k and bool(torch.isneginf(w.index_select(0, idx)).any()):
        raise ValueError(
            f"fewer than k={k} entries have positive weight; cannot draw k distinct indices without replacement"
        )
    return idx
