"""Exact top-k, top-fraction masks and global quantile thresholds without full-n sorts.

Why not ``torch.topk`` / ``torch.kthvalue`` / ``torch.quantile`` on the whole model? On CPU ``topk`` for a small
k of 125M entries is single-threaded and copies 16 bytes per element (~1.2 s), ``kthvalue`` copies and
quickselects (~0.4 s for 16M), and ``torch.quantile`` refuses more than 2^24 elements. All three answers here
are exact; randomness (a subsample) is used only to find a *bracket* cheaply, and every result is checked
against full counts, with an exact fallback if the bracket misses. So the subsample changes the speed, never
the answer.

Tie-breaking, everywhere in ``sftune.select``: the total order is (value descending, flat index ascending),
i.e. among equal values the LOWER flat index wins. Budgets are exact: asking for k entries returns exactly k.

Scores must not contain NaN (NaN has no place in the order; ``torch.topk`` would rank it first, these
functions raise or ignore it as documented per function).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "topk_indices",
    "top_fraction_mask",
    "global_threshold",
    "global_threshold_mask",
    "kth_largest_value",
]

# Below this many elements the plain exact path is fast enough and simpler.
_SMALL = 1 << 16
# Block length for the two-level candidate filter (block max, then only the hit blocks): 64 floats is
# 256 bytes, long enough that the block-max pass streams at memory speed, short enough that gathering the
# hit blocks stays small when candidates are scattered (k hits touch at most 64k entries).
_FILTER_BLOCK = 64

# Order statistics of at most this many values are taken from a plain sort; above, by bracketing.
_SORT_MAX = 1 << 18
# Largest subsample for bracketing. The band between the brackets is ~10 sigma of the subsample rank
# wide: ~0.8% of n for a central quantile at 2^18, ~2.5% at 2^15.
_BRACKET_SAMPLE = 1 << 18

_default_generators: dict[str, torch.Generator] = {}


def _generator_for(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fixed-seed one per device.

    Randomness here only picks a bracket (speed), never the result, so a fixed private generator keeps the
    functions deterministic without consuming the caller's global RNG stream.
    """
    if generator is not None:
        return generator
    key = str(device)
    g = _default_generators.get(key)
    if g is None:
        g = torch.Generator(device=device)
        g.manual_seed(0x5EED)
        _default_generators[key] = g
    return g


def _random_indices(n: int, m: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """m indices uniform on [0, n), from float64 uniforms.

    ``torch.randint`` is modulo-biased at n ~ 1e8 (32-bit draws) and float32 uniforms only reach every ~8th
    index above 2^24; float64 has 53 bits, so the bias is < n / 2^53.
    """
    u = torch.rand(m, dtype=torch.float64, generator=generator, device=device)
    return u.mul_(n).to(torch.long).clamp_(max=n - 1)


def _k_largest_positions(vals: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (ascending) of the k largest entries of 1-D ``vals`` under (value desc, position asc).

    ``vals`` is expected in index order (callers pass candidates sorted by flat index), so "position asc"
    is "lower flat index wins". Costs one topk/kthvalue plus two compare passes over ``vals``.
    """
    n = vals.numel()
    if k >= n:
        return torch.arange(n, device=vals.device)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=vals.device)
    # v = the k-th largest value (ties included), the only thing taken from topk/kthvalue, so their own
    # (unspecified) tie order never leaks into the result.
    if 2 * k <= n:
        v = torch.topk(vals, k, sorted=False).values.min()
    else:
        v = torch.kthvalue(vals, n - k + 1).values
    if torch.isnan(v):
        raise ValueError("scores contain NaN; the top-k order is undefined")
    pos_gt = (vals > v).nonzero().squeeze(1)
    need = k - pos_gt.numel()  # >= 1 by the definition of v
    pos_eq = (vals == v).nonzero().squeeze(1)[:need]  # lowest positions among the ties
    if pos_eq.numel() != need:
        raise ValueError("scores contain NaN; the top-k order is undefined")
    if pos_gt.numel() == 0:
        return pos_eq
    return torch.sort(torch.cat([pos_gt, pos_eq])).values


def _indices_ge(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices i with ``x[i] >= t`` for a 1-D contiguous ``x``, cheap when they are few.

    A plain ``(x >= t).nonzero()`` costs a compare pass plus a slow n-sized nonzero. Instead: one block-max
    pass (streams at memory speed, output n/64), nonzero over the block maxima, then compare + nonzero only
    inside the blocks that contain a candidate. Falls back to the plain form when most blocks are hit.
    """
    n = x.numel()
    B = _FILTER_BLOCK
    nb = n // B
    if nb < 16:
        return (x >= t).nonzero().squeeze(1)
    main = x[: nb * B].view(nb, B)
    hit = (main.amax(dim=1) >= t).nonzero().squeeze(1)
    if hit.numel() * 4 > nb:  # most blocks hit: the direct pass is cheaper than gathering them
        return (x >= t).nonzero().squeeze(1)
    rows = main.index_select(0, hit)
    rc = (rows >= t).nonzero()  # row-major, so the flat indices below come out ascending
    idx = hit[rc[:, 0]] * B + rc[:, 1]
    if nb * B < n:
        tail = (x[nb * B :] >= t).nonzero().squeeze(1) + nb * B
        idx = torch.cat([idx, tail])
    return idx


def _flat(scores: torch.Tensor) -> torch.Tensor:
    return scores.reshape(-1)  # a view for contiguous input (the normal case); a copy otherwise


def topk_indices(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact top-k of 1-D (or any-shape, flattened) ``scores``: LongTensor[k] of flat indices, ASCENDING.

    The value multiset equals ``torch.topk(scores, k).values``; ties at the k-th value are resolved by lower
    flat index (``torch.topk`` leaves that unspecified). Returned in ascending index order (not by value),
    which is the order masks, gathers and scatters want.

    Prefilter for small k/n: the r-th largest of a random subsample (r a few standard deviations past the
    expected rank of the true k-th value) is, with overwhelming probability, <= the true k-th value; all
    entries >= it are candidates (a superset of the answer when there are >= k of them), found with a
    two-level block filter, and the exact selection runs on the candidates only. If fewer than k candidates
    survive (the rare miss), it falls back to the exact full computation, so the answer never depends on the
    subsample. ``generator`` only drives the subsample (default: a fixed private generator).
    NaN scores are never selected by the prefilter; with NaN present the full path raises.
    """
    x = _flat(scores)
    n = x.numel()
    k = int(k)
    if k < 0 or k > n:
        raise ValueError(f"k={k} out of range for {n} scores")
    if k == n:
        return torch.arange(n, device=x.device)
    if n <= _SMALL or 32 * k > n:
        # Small inputs, or k so large that the candidate set is a big fraction of n anyway.
        return _k_largest_positions(x, k)
    gen = _generator_for(x.device, generator)
    # Subsample size: ~256 subsample points expected above the true threshold. The margin below then costs
    # ~28% extra candidates (cheap: O(k) work); the random gather is ~20% of the total at n=125M, k=102k.
    m = min(n, max(1 << 16, (256 * n) // max(k, 1)), 1 << 21)
    c = m * k / n  # expected subsample rank of the true k-th value
    r = min(m, int(c + 4.0 * math.sqrt(c) + 8))  # a few sigma lower in value: a safe under-estimate
    sample = x[_random_indices(n, m, gen, x.device)]
    t = torch.topk(sample, r, sorted=False).values.min()
    cand = _indices_ge(x, t)
    if cand.numel() < k:  # the bracket missed (probability ~1e-5): exact full path
        return _k_largest_positions(x, k)
    return cand[_k_largest_positions(x[cand], k)]


def kth_largest_value(
    scores: torch.Tensor | Sequence[torch.Tensor], r: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exact r-th largest value (1-based) over a tensor or over the union of a list of tensors (0-d tensor).

    No concatenation of the list and no full sort: see ``_kth_smallest``.
    """
    tensors = [scores] if isinstance(scores, torch.Tensor) else list(scores)
    n = sum(t.numel() for t in tensors)
    if not 1 <= r <= n:
        raise ValueError(f"rank {r} out of range for {n} values")
    return _kth_smallest([_flat(t) for t in tensors], n - r, 1, generator)[0]


def _kth_smallest(
    tensors: list[torch.Tensor], j: int, count: int, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Exact order statistics at 0-based ascending ranks j, ..., j+count-1 of the union of 1-D ``tensors``.

    Bracketing: sort a stratified subsample, take values lo/hi a few standard deviations below/above the
    expected subsample ranks, count exactly how many entries are < lo, extract the band [lo, hi] (a small
    fraction of n), and run ``kthvalue`` on the band. The counts prove the band holds the wanted ranks; if
    it does not (rare), fall back to concatenating (memory heavy, but exact).
    """
    device = tensors[0].device
    n = sum(t.numel() for t in tensors)
    j_hi = min(j + count - 1, n - 1)
    if n <= _SORT_MAX:
        allv = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        srt = torch.sort(allv).values
        return [srt[min(i, n - 1)] for i in range(j, j + count)]
    gen = _generator_for(device, generator)
    # ~n/64 samples (the band then holds ~2-3% of n for a central rank), bounded so sorting the sample
    # stays cheap next to the passes over n.
    m = min(n, _BRACKET_SAMPLE, max(1 << 12, n // 64))
    parts = []
    for t in tensors:  # stratified: each tensor contributes in proportion to its size
        mi = max(1, round(m * t.numel() / n)) if t.numel() else 0
        if mi:
            parts.append(t[_random_indices(t.numel(), mi, gen, device)])
    sample = torch.sort(torch.cat(parts)).values
    ms = sample.numel()
    q_lo, q_hi = j / n, (j_hi + 1) / n
    # ~5 standard deviations of the subsample rank on each side, plus a constant for small samples.
    d = 5.0 * math.sqrt(ms * max(q_lo * (1 - q_lo), 1.0 / ms)) + 16
    i_lo = math.floor(q_lo * ms - d)
    i_hi = math.ceil(q_hi * ms + d)
    lo = sample[i_lo] if i_lo >= 0 else None
    hi = sample[i_hi] if i_hi < ms else None
    below = 0  # exact count of entries < lo
    band_parts = []
    for t in tensors:
        if t.numel() == 0:
            continue
        sel = None
        if lo is not None:
            sel = t >= lo
            below += t.numel() - int(torch.count_nonzero(sel))
        if hi is not None:
            sel = (t <= hi) if sel is None else sel.logical_and_(t <= hi)
        band_parts.append(t if sel is None else t[sel])
    band = torch.cat(band_parts) if len(band_parts) > 1 else band_parts[0]
    if below <= j and j_hi < below + band.numel():  # the counts prove the band holds the ranks
        return [torch.kthvalue(band, min(i, n - 1) - below + 1).values for i in range(j, j + count)]
    srt = torch.sort(torch.cat(tensors)).values  # exact fallback (the bracket missed)
    return [srt[min(i, n - 1)] for i in range(j, j + count)]


def top_fraction_mask(
    scores: torch.Tensor, keep: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BoolTensor shaped like ``scores`` with exactly ``keep`` True entries: the largest scores.

    Ties at the threshold value are resolved by lower flat index. Used per matrix by DPS with
    ``keep = ceil((1 - p) * N)``. Exact; see ``_kth_smallest`` for how the threshold is found.
    """
    x = _flat(scores)
    n = x.numel()
    keep = int(keep)
    if keep < 0 or keep > n:
        raise ValueError(f"keep={keep} out of range for {n} scores")
    if keep == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if keep == n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    v = _kth_smallest([x], n - keep, 1, generator)[0]
    if torch.isnan(v):
        raise ValueError("scores contain NaN; the top-k order is undefined")
    mask = x >= v
    if int(torch.count_nonzero(mask)) != keep:  # ties straddle the threshold: keep the lowest indices
        torch.gt(x, v, out=mask)
        need = keep - int(torch.count_nonzero(mask))
        eq = (x == v).nonzero().squeeze(1)[:need]
        mask.index_fill_(0, eq, True)
    return mask.view(scores.shape)


def global_threshold(
    scores_list: Sequence[torch.Tensor], keep_fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Child-Tuning D's global threshold: ``np.percentile(all_scores, (1 - keep_fraction) * 100)``.

    Definition (matches NumPy >= 2 ``percentile``/``quantile`` with the default ``method='linear'`` exactly,
    bit for bit, for float32 and float64 scores, as the reference ``np.percentile`` on the concatenated
    scores computes it):
        q  = ((1 - keep_fraction) * 100) / 100           (float64, same operations as NumPy)
        h  = (N - 1) * q ;  j = floor(h) ;  gamma = h - j
        a, b = the j-th and (j+1)-th smallest values (0-based; b = a when j = N - 1)
        tau = a + (b - a) * gamma         if gamma < 0.5
        tau = b - (b - a) * (1 - gamma)   otherwise
    with the arithmetic of the last two lines done in the scores' dtype (gamma rounded to it), as NumPy
    does when the percentile is a Python float (the reference's ``(1 - reserve_p) * 100``; given a NumPy
    float64 percentile instead, NumPy would interpolate in float64 and can differ in the last bit).
    bf16 scores (no NumPy counterpart) interpolate in float32.
    Returns a 0-d tensor on the scores' device (no host copy of the scores is made).
    """
    tensors = [_flat(t) for t in scores_list if t.numel() > 0]
    if not tensors:
        raise ValueError("no scores")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"scores must share one dtype, got {sorted(map(str, dtypes))}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction={keep_fraction} not in [0, 1]")
    n = sum(t.numel() for t in tensors)
    q = ((1.0 - keep_fraction) * 100.0) / 100.0
    h = (n - 1) * q
    j = math.floor(h)
    gamma = h - j
    if h >= n - 1:  # NumPy takes the last element for both neighbours here
        j, gamma = n - 1, 0.0
    a, b = _kth_smallest(tensors, j, 2, generator)
    dt = tensors[0].dtype
    work = dt if dt in (torch.float16, torch.float32, torch.float64) else torch.float32
    a = a.to(work)
    b = b.to(work)
    diff = b - a
    if gamma >= 0.5:
        tau = b - diff * torch.tensor(1.0 - gamma, dtype=work, device=a.device)
    else:
        tau = a + diff * torch.tensor(gamma, dtype=work, device=a.device)
    return tau


def global_threshold_mask(
    scores_list: Sequence[torch.Tensor], keep_fraction: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Child-Tuning D masks ``M_i = F_i >= tau`` with one global ``tau = global_threshold(...)``.

    ``keep_fraction`` is Child-Tuning's ``reserve_p`` (fraction KEPT). As in the reference, ties at tau
    are all kept, so slightly more than ``keep_fraction`` may be selected when scores repeat.
    """
    tau = global_threshold(scores_list, keep_fraction, generator)
    return [t >= tau.to(t.dtype) if t.dtype != tau.dtype else t >= tau for t in scores_list]
