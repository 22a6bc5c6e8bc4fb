"""Exact weighted and uniform sampling of k distinct indices out of n (n up to and beyond 2^31 / 2^24).

``torch.multinomial`` refuses more than 2^24 categories and NumPy's ``choice(replace=False, p=...)`` costs
~5.7 s and 32 B/param on roberta-base. Both samplers here draw exactly from the successive-sampling
("draw proportionally to weight among those not yet drawn, k times") distribution, i.e. NumPy's and
Efraimidis-Spirakis'. Two interchangeable methods compute it:

``method="keys"`` -- Efraimidis-Spirakis exponential keys: ``key_i = log(U_i) / w_i`` (equivalently
    Gumbel-top-k on ``log w``); the k largest keys are the sample. Streamed over chunks of ``chunk_size``
    with a running top-k: each chunk is filtered against the current k-th key (strictly greater, since
    later chunks hold larger indices and lose ties), so at most one chunk plus O(k) is alive. n random
    numbers per call (on CPU ~16x slower than "cdf"; on an H100 ~2.5x slower at n = 125M).

``method="cdf"`` -- inverse-CDF draws *with* replacement, keeping the distinct items, in rounds. The
    distinct items of an i.i.d. sequence drawn proportionally to w, in order of first occurrence, are
    exactly the successive-sampling sequence (given the set so far, the next new item is proportional to
    w among the rest). Each round makes exactly as many draws as items are still missing, so it can never
    overshoot and the order inside a round never matters; draws that hit an already selected item are
    rejected (or, once that would waste many draws, the selected items are removed from the
    distribution). This needs one streaming pass over the weights (float32 block sums, n/32 outputs) and
    O(k * 32) further work instead of n random numbers: ~0.1 s instead of ~1.7 s for 125M weights on 2
    CPU threads. A 3-level tree of float32 partial sums (32 weights per block, 32 blocks per superblock)
    is descended per draw with float64 row-local prefix sums; the draws are generated already sorted
    (exponential spacings), so nodes and items come out sorted and duplicates adjacent. If rounds
    stall (pathologically skewed weights), the rest is drawn with the keys method on the remaining items,
    which is exact as well (successive sampling is Markov in the set drawn so far).

``method="auto"`` (default) is "cdf" (the faster one on both CPU and GPU in ``bench/selection.py``).

Exactness caveats, both tiny and documented rather than hidden: "keys" quantises U to float32 (24-bit)
grid midpoints (0 is never drawn: ``uniform_(2**-25, 1)``), so exact key ties happen at a rate of ~1e-7 per
pair and are then broken by lower index; "cdf" uses float32 block sums (relative error ~1e-7 on a block's
and superblock mass) and float64 prefix sums (absolute error ~1e-16 of the total weight per draw).

Both return the k indices in ASCENDING index order (as a set; draw order is not kept), as int64 on the
weights' device. The same generator state gives the same result (same device, same arguments). Weights must
be finite and >= 0 (not checked on the hot path); fewer than k positive weights raises ValueError.
"""

from __future__ import annotations

import math

import torch

from .topk import _k_largest_positions, topk_indices

__all__ = ["BlockWeights", "weighted_sample_without_replacement", "weighted_sample_keys_",
           "uniform_sample_without_replacement"]

# Lower end of the uniform draw for the keys method: torch's float32 uniform_ is a multiple of 2^-24 in
# [0, 1); drawing from [2^-25, 1) moves only the value 0 (to 2^-25, its bucket's midpoint) so log(U) is
# finite, a positive weight never gets the -inf key reserved for zero weights, and U < 1 keeps
# 0/0 = NaN out for zero weights (log(U) < 0 strictly, so log(U)/0 = -inf).
_U_LOW = 2.0**-25
# Fan-out of the cdf method's tree: per draw and level, one gathered row of _BLOCK values; the level-1
# sums are the only O(n) pass (n / 32 outputs), the top prefix sum is over n / 1024 values.
_BLOCK = 32
_MAX_ROUNDS = 40
_DRAW_CHUNK = 1 << 15  # draws processed together on CPU (temporaries ~8 MiB: cache-friendly)
_DRAW_CHUNK_OTHER = 1 << 17  # elsewhere: fewer, larger kernels (launches are the cost on a GPU)


class BlockWeights:
    """Weights that the cdf method reads in blocks instead of as one tensor.

    The cdf method touches the weights in three ways only: one streaming pass for the sums of consecutive
    blocks of B entries, a few gathered blocks per draw, and the values of the drawn items. A caller whose
    weights are a function of other tensors (Stochastic Tuning's importance, computed from each parameter,
    its gradient and its input means) implements these and never materialises an n-sized vector. Entries
    are numbered 0..numel-1; a block is B consecutive entries, the last one zero-padded.
    """

    numel: int
    device: torch.device

    def level_sums(self, B: int) -> torch.Tensor:
        """float32 sums of the ceil(numel / B) consecutive blocks of B entries."""
        raise NotImplementedError

    def rows(self, row_ids: torch.Tensor, B: int) -> torch.Tensor:
        """(len(row_ids), B) entries of the given blocks, zero past numel."""
        raise NotImplementedError

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        """The entries at ``idx``."""
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """All entries as one 1-D tensor (only the rare fallback to the keys method needs it)."""
        raise NotImplementedError


class _TensorWeights(BlockWeights):
    def __init__(self, w: torch.Tensor):
        self.w, self.numel, self.device = w, w.numel(), w.device

    def level_sums(self, B: int) -> torch.Tensor:
        return _level_sums(self.w, B)

    def rows(self, row_ids: torch.Tensor, B: int) -> torch.Tensor:
        return _gather_rows(self.w, row_ids, B)

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        return self.w[idx]

    def dense(self) -> torch.Tensor:
        return self.w


def weighted_sample_without_replacement(
    weights: torch.Tensor | BlockWeights,
    k: int,
    generator: torch.Generator,
    chunk_size: int = 1 << 22,
    out: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """k distinct indices of the flat ``weights``, drawn without replacement proportionally to weight.

    Exact successive sampling (NumPy ``choice(n, k, replace=False, p=w/sum(w))`` semantics); see the
    module docstring for the two methods. ``generator`` must live on the weights' device. ``chunk_size``
    bounds the temporaries of the keys method (one chunk of float32 keys plus O(k)); the cdf method needs
    n / 32 floats plus O(k + 32 * min(k, 32768)) (ignores ``chunk_size`` unless it falls back to keys).
    ``out``: optional int64 tensor of k elements to write the result into. Returns int64 indices in
    ascending order.

    ``weights`` may also be a ``BlockWeights`` (weights computed block by block, never materialised).

    Raises ValueError if fewer than k weights are positive (zero-weight entries are never selected).
    """
    src = weights if isinstance(weights, BlockWeights) else _TensorWeights(weights.reshape(-1))
    n = src.numel
    k = int(k)
    if k < 0 or k > n:
        raise ValueError(f"cannot draw k={k} distinct indices out of n={n}")
    if method == "auto":
        method = "cdf"
    if k == 0:
        res = torch.empty(0, dtype=torch.long, device=src.device)
    elif method == "keys":
        res = _sample_keys(src.dense(), k, generator, chunk_size, exclude=None)
    elif method == "cdf":
        res = _sample_cdf(src, k, generator, chunk_size)
    else:
        raise ValueError(f"unknown method {method!r} (expected 'auto', 'keys' or 'cdf')")
    if out is not None:
        out.copy_(res)
        return out
    return res


# --------------------------------------------------------------------------- keys (Efraimidis-Spirakis)
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


# --------------------------------------------------------------------------- cdf (with replacement + dedup)
def _in_sorted(values: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """Bool mask: which ``values`` occur in the ascending 1-D ``sorted_set`` (binary search, no sort)."""
    if sorted_set.numel() == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    pos = torch.searchsorted(sorted_set, values).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[pos] == values


def _level_sums(x: torch.Tensor, B: int) -> torch.Tensor:
    """float32 (float64 for float64 input) sums of consecutive groups of B entries of 1-D ``x``.

    One streaming pass (vectorised, memory speed); relative error ~1e-7 per sum. A float64 reduction of
    float32 input would go through a cast path ~30x slower.
    """
    n = x.numel()
    nb_full = n // B
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    parts = []
    if nb_full:
        parts.append(torch.sum(x[: nb_full * B].view(nb_full, B), dim=1, dtype=acc))
    if nb_full * B < n:
        parts.append(x[nb_full * B :].sum(dtype=acc).reshape(1))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _gather_rows(x: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    """(len(rows), B) groups of B consecutive entries of 1-D ``x``, the short last group zero-padded."""
    n = x.numel()
    nb_full = n // B
    if nb_full * B == n:
        return x.view(nb_full, B).index_select(0, rows)
    tail = torch.zeros(B, dtype=x.dtype, device=x.device)
    tail[: n - nb_full * B] = x[nb_full * B :]
    if nb_full == 0:
        return tail.expand(rows.numel(), B).clone()
    out = x[: nb_full * B].view(nb_full, B).index_select(0, rows.clamp(max=nb_full - 1))
    out[rows == nb_full] = tail
    return out


def _zero_items_in_rows(rows: torch.Tensor, row_ids: torch.Tensor, items: torch.Tensor, B: int) -> None:
    """Set rows[r, j] = 0 for every item = row_ids[r] * B + j in ``items`` (row_ids ascending)."""
    if items.numel() == 0 or row_ids.numel() == 0:
        return
    ib = torch.div(items, B, rounding_mode="floor")
    r = torch.searchsorted(row_ids, ib).clamp_(max=row_ids.numel() - 1)
    hit = row_ids[r] == ib
    rows[r[hit], (items - ib * B)[hit]] = 0


def _descend(
    vals: BlockWeights, parent: torch.Tensor, frac: torch.Tensor, B: int, zero_items: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level down the sampling tree.

    Each draw sits in node ``parent`` (ascending) at relative position ``frac`` in [0, 1) of that node's
    mass; its children are ``vals[parent * B : parent * B + B]``. Returns the child index, the relative
    position inside the child (reused by the next level), and whether the child has positive mass.
    The row prefix sums are float64 and row-local, so a child's interval is resolved relative to its own
    row (a row-wise 2-D cumsum is also ~5x faster than a fresh 1-D float64 cumsum on CPU).
    """
    up, counts = torch.unique_consecutive(parent, return_counts=True)
    rows = vals.rows(up, B)
    if zero_items is not None:
        _zero_items_in_rows(rows, up, zero_items, B)
    rp = rows.to(torch.float64).cumsum_(1)
    if up.numel() == parent.numel():  # every node hit once: no per-draw gather needed
        inv = torch.arange(up.numel(), device=parent.device)
        rpi = rp
    else:
        inv = torch.repeat_interleave(torch.arange(up.numel(), device=parent.device), counts)
        rpi = rp.index_select(0, inv)
    target = frac * rpi[:, B - 1]
    j = torch.searchsorted(rpi, target.unsqueeze(1), right=True).squeeze(1).clamp_(max=B - 1)
    cur = rpi.gather(1, j.unsqueeze(1)).squeeze(1)
    prev = rpi.gather(1, (j - 1).clamp_(min=0).unsqueeze(1)).squeeze(1).masked_fill_(j == 0, 0.0)
    width = cur - prev
    ok = width > 0
    child_frac = ((target - prev) / width).clamp_(0.0, 1.0)
    return up[inv] * B + j, child_frac, ok


def _sorted_uniforms(m: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """m i.i.d. U[0, 1) draws in ascending order, without sorting.

    Normalised partial sums of m + 1 standard exponentials are distributed exactly as the order
    statistics of m uniforms. Sorted draws make every later step monotone: nodes and items come out
    sorted (duplicates adjacent) and the binary searches walk memory forwards.
    """
    e = torch.rand(m + 1, dtype=torch.float64, generator=generator, device=device)
    e = torch.log1p(e.neg_()).neg_()  # -log(1 - U): finite, since U < 1
    s = torch.cumsum(e, 0)
    return (s[:m] / s[m]).clamp_(max=1.0 - 2.0**-53)


def _sample_cdf(w: BlockWeights, k: int, generator: torch.Generator, chunk_size: int) -> torch.Tensor:
    """Successive sampling by rounds of i.i.d. inverse-CDF draws down a 3-level tree (see module doc).

    Tree: leaves = weights, level 1 = sums of ``_BLOCK`` leaves, level 2 = sums of ``_BLOCK`` level-1
    nodes, top = float64 prefix sums of level 2 (n / 1024 values). Only level 1 costs a pass over n.

    Round invariant: levels 1-2 describe w with the items of ``removed`` set to zero, and gathered leaf
    rows get those items zeroed too, so each draw is i.i.d. from w restricted to the complement of
    ``removed``; draws that hit ``selected`` (a superset of ``removed``) are rejected, so the accepted
    ones are i.i.d. from w restricted to the not-yet-selected items, exactly what successive sampling
    needs next. Each round makes exactly ``need`` draws, so it yields at most ``need`` new items and
    never truncates (which is why draw order never matters and sorted draws are allowed). When the
    rejected mass grows large, ``selected`` is folded into ``removed`` (exact sums for touched nodes).
    """
    dev = w.device
    B = _BLOCK
    lvl1 = w.level_sums(B)
    lvl2 = _level_sums(lvl1, B)
    lvl1_rows = _TensorWeights(lvl1)
    top = torch.cumsum(lvl2.to(torch.float64), 0)
    removed = torch.empty(0, dtype=torch.long, device=dev)  # ascending
    selected = torch.empty(0, dtype=torch.long, device=dev)  # ascending
    have = 0
    pending_mass = 0.0  # mass of selected items not yet removed (rejected draws land there)
    for _ in range(_MAX_ROUNDS):
        need = k - have
        if need == 0:
            break
        total = float(top[-1])  # host sync: needed to detect exhausted or bad weights
        if not math.isfinite(total):
            raise ValueError("weights must be finite and non-negative")
        if pending_mass > 0.25 * total:
            # Many draws would be rejected: remove the selected items from the distribution.
            b1 = torch.unique_consecutive(torch.div(selected, B, rounding_mode="floor"))
            rows = w.rows(b1, B)
            _zero_items_in_rows(rows, b1, selected, B)
            lvl1[b1] = rows.to(torch.float64).sum(dim=1).to(lvl1.dtype)
            b2 = torch.unique_consecutive(torch.div(b1, B, rounding_mode="floor"))
            lvl2[b2] = _gather_rows(lvl1, b2, B).to(torch.float64).sum(dim=1).to(lvl2.dtype)
            top = torch.cumsum(lvl2.to(torch.float64), 0)
            removed = selected
            pending_mass = 0.0
            total = float(top[-1])
        if total <= 0.0:
            raise ValueError(
                f"fewer than k={k} entries have positive weight; "
                "cannot draw k distinct indices without replacement"
            )
        u = _sorted_uniforms(need, generator, dev).mul_(top[-1])
        found = []
        draw_chunk = _DRAW_CHUNK if torch.device(dev).type == "cpu" else _DRAW_CHUNK_OTHER
        for a in range(0, need, draw_chunk):  # bounded temporaries: O(draw_chunk * _BLOCK)
            uc = u[a : a + draw_chunk]
            s2 = torch.searchsorted(top, uc, right=True).clamp_(max=top.numel() - 1)
            hi = top[s2]
            lo = (top[(s2 - 1).clamp_(min=0)]).masked_fill_(s2 == 0, 0.0)
            f2 = ((uc - lo) / (hi - lo)).clamp_(0.0, 1.0)
            ok = hi > lo
            s1, f1, ok1 = _descend(lvl1_rows, s2, f2, B, None)
            leaf, _, ok0 = _descend(w, s1, f1, B, removed if removed.numel() else None)
            # A draw on a zero-mass node can only come from rounding at an interval edge: reject it.
            # Rejection depends only on the draw itself, so the accepted draws stay exact.
            found.append(leaf[ok & ok1 & ok0])
        items = torch.cat(found) if len(found) > 1 else found[0]
        new = torch.unique_consecutive(items)  # ascending: u ascending and the tree map is monotone
        if have:
            new = new[~_in_sorted(new, selected)]
        got = new.numel()
        if got:
            selected = torch.sort(torch.cat([selected, new])).values
            have += got
            pending_mass += float(w.values(new).to(torch.float64).sum())
    if have < k:
        # Stalled (pathologically skewed weights): finish exactly with exponential keys on the rest.
        rest = _sample_keys(w.dense(), k - have, generator, chunk_size, exclude=selected)
        selected = torch.sort(torch.cat([selected, rest])).values
    return selected


# --------------------------------------------------------------------------- uniform
def uniform_sample_without_replacement(
    n: int,
    k: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """k distinct indices chosen uniformly at random from [0, n) (Random Tuning). int64, ascending.

    Exact, by the same argument as the cdf method with equal weights: each round draws exactly ``need``
    i.i.d. uniform indices (sorted float64 uniforms times n: no modulo bias, and duplicates come out
    adjacent), keeps the distinct ones not drawn before, and repeats until k are found (expected draws
    ~ k + k^2 / 2n). For k > n / 2 a ``randperm`` prefix is cheaper.
    """
    n, k = int(n), int(k)
    if k < 0 or k > n:
        raise ValueError(f"cannot draw k={k} distinct indices out of n={n}")
    dev = torch.device(device) if device is not None else generator.device
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=dev)
    if 2 * k > n:
        return torch.sort(torch.randperm(n, generator=generator, device=dev)[:k]).values
    selected = torch.empty(0, dtype=torch.long, device=dev)
    have = 0
    while have < k:
        need = k - have
        items = _sorted_uniforms(need, generator, dev).mul_(n).to(torch.long).clamp_(max=n - 1)
        new = torch.unique_consecutive(items)
        if have:
            new = new[~_in_sorted(new, selected)]
        selected = torch.sort(torch.cat([selected, new])).values
        have += new.numel()
    return selected
