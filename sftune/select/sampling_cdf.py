"""The cdf method of exact weighted sampling without replacement: rounds of sorted inverse-CDF draws with
replacement down a 3-level tree of block sums, keeping the distinct items (see ``sampling.py`` for why this
is exact). Also the sorted-uniform and sorted-membership helpers the uniform sampler shares.
"""

from __future__ import annotations

import math

import torch

from .blocks import _BLOCK, BlockWeights, _gather_rows, _level_sums, _TensorWeights
from .sampling_keys import _sample_keys

_MAX_ROUNDS = 40
_DRAW_CHUNK = 1 << 15  # draws processed together on CPU (temporaries ~8 MiB: cache-friendly)
_DRAW_CHUNK_OTHER = 1 << 17  # elsewhere: fewer, larger kernels (launches are the cost on a GPU)


def _in_sorted(values: torch.Tensor, sorted_set: torch.Tensor) -> torch.Tensor:
    """Bool mask: which ``values`` occur in the ascending 1-D ``sorted_set`` (binary search, no sort)."""
    if sorted_set.numel() == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    pos = torch.searchsorted(sorted_set, values).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[pos] == values


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
