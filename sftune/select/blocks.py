"""Weights the samplers read block by block: the ``BlockWeights`` interface and its block layout.

The cdf method (``sampling_cdf.py``) touches the weights only as sums of consecutive blocks of ``_BLOCK``
entries, gathered blocks and single values; a caller whose weights are computed (Stochastic Tuning's
importance) implements ``BlockWeights`` over the same layout and uses ``_level_sums``, so both sides agree
bitwise. ``_TensorWeights`` is the plain case, weights in one flat tensor.
"""

from __future__ import annotations

import torch

# Fan-out of the cdf method's tree: per draw and level, one gathered row of _BLOCK values; the level-1
# sums are the only O(n) pass (n / 32 outputs), the top prefix sum is over n / 1024 values.
_BLOCK = 32


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
