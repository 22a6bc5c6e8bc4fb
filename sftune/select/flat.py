"""One preallocated flat buffer with per-parameter views.

Selectors keep n-sized state (importance scores, Fisher / gradient accumulators, keys). Allocating such
tensors afresh every step costs far more than the arithmetic on them (first-touch page faults are ~7x the
cost of a warm pass), and a flat layout lets a whole-model operation (a global top-k, a weighted sample,
a global quantile) run on a single 1-D tensor with no concatenation copy. ``FlatBuffer`` allocates the
storage once; each parameter gets a view shaped like it, so per-parameter code writes in place with
``out=`` / in-place ops and whole-model code reads ``buffer.data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

__all__ = ["FlatBuffer", "split_sorted"]


def split_sorted(idx: torch.Tensor, names: Sequence[str], starts: Sequence[int],
                 bounds: torch.Tensor, in_place: bool = False) -> dict[str, torch.Tensor]:
    """Ascending global indices -> per-name local indices, where name i owns [starts[i], starts[i + 1]).
    ``bounds`` is ``starts`` plus the end, as a tensor on the indices' device. Every name gets an entry
    (possibly empty). One host sync: the counts per segment, from one searchsorted over len(names) + 1 values.
    ``in_place``: the local indices are views of ``idx``, overwritten (no second index tensor; ``idx`` no
    longer holds the global indices afterwards)."""
    cuts = torch.searchsorted(idx, bounds).tolist()
    if not in_place:
        return {n: idx[cuts[i] : cuts[i + 1]] - starts[i] for i, n in enumerate(names)}
    out = {}
    for i, n in enumerate(names):
        out[n] = idx[cuts[i] : cuts[i + 1]]
        if starts[i]:
            out[n].sub_(starts[i])
    return out


class FlatBuffer:
    """A 1-D tensor of ``dtype`` partitioned into named, shaped views.

    ``data``        the whole 1-D tensor (``numel`` entries, in insertion order of the names)
    ``views``       name -> view shaped like the parameter (shares storage with ``data``)
    ``flat_views``  name -> 1-D view of the same entries
    ``offsets``     name -> start offset of the entry range in ``data``
    ``shapes``      name -> ``torch.Size``

    Flat index ``i`` of ``data`` is entry ``i - offsets[name]`` of ``views[name].reshape(-1)`` (row-major
    order), which is how selectors map a global selection back to per-parameter masks or indices.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int] | torch.Size],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        fill: float | None = 0.0,
    ) -> None:
        self.dtype = dtype
        self.names: list[str] = list(shapes)
        self.shapes: dict[str, torch.Size] = {n: torch.Size(shapes[n]) for n in self.names}
        self.offsets: dict[str, int] = {}
        off = 0
        for n in self.names:
            self.offsets[n] = off
            off += self.shapes[n].numel()
        self.numel = off
        # ``empty`` + one fill: the fill touches every page once, here, instead of inside the first step.
        self.data = torch.empty(self.numel, dtype=dtype, device=device)
        if fill is not None:
            self.data.fill_(fill)
        self.flat_views: dict[str, torch.Tensor] = {}
        self.views: dict[str, torch.Tensor] = {}
        for n in self.names:
            a = self.offsets[n]
            flat = self.data[a : a + self.shapes[n].numel()]
            self.flat_views[n] = flat
            self.views[n] = flat.view(self.shapes[n])
        # Boundaries as a device tensor, built once, for ``split_indices``.
        self._bounds = torch.tensor(
            [self.offsets[n] for n in self.names] + [self.numel], dtype=torch.long, device=self.data.device
        )

    @classmethod
    def like(
        cls,
        tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        fill: float | None = 0.0,
    ) -> FlatBuffer:
        """A buffer with one view per named tensor (e.g. ``model.named_parameters()``), same shapes.

        ``dtype`` defaults to float32 (not the tensors' dtype: scores of bf16 weights still want fp32),
        ``device`` to the first tensor's device.
        """
        items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
        if device is None and items:
            device = items[0][1].device
        return cls({n: t.shape for n, t in items}, dtype=dtype or torch.float32, device=device, fill=fill)

    # ------------------------------------------------------------------ access
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.views[name]

    def __contains__(self, name: str) -> bool:
        return name in self.views

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def items(self):
        return self.views.items()

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def segment(self, name: str) -> tuple[int, int]:
        """``(start, stop)`` of ``name``'s entries in ``data``."""
        a = self.offsets[name]
        return a, a + self.shapes[name].numel()

    # ----------------------------------------------------------------- updates
    def zero_(self) -> FlatBuffer:
        self.data.zero_()
        return self

    def fill_(self, value: float) -> FlatBuffer:
        self.data.fill_(value)
        return self

    def copy_from(self, tensors: Mapping[str, torch.Tensor]) -> FlatBuffer:
        """Copy each named tensor into its view (names missing from ``tensors`` are left as they are)."""
        for n, t in tensors.items():
            self.views[n].copy_(t)
        return self

    # ------------------------------------------------------------- selections
    def split_indices(self, flat_indices: torch.Tensor, assume_sorted: bool = False) -> dict[str, torch.Tensor]:
        """Map global flat indices into ``data`` to per-name local flat indices (int64, ascending).

        Every name gets an entry (possibly empty), so callers can hand the result straight to an optimizer
        as "update exactly these entries" (an empty index freezes that parameter for the step). One host
        sync (the per-name counts), which is unavoidable for splitting into Python-level pieces.
        """
        idx = flat_indices.reshape(-1).to(device=self.data.device, dtype=torch.long)
        if not assume_sorted:
            idx = torch.sort(idx).values
        return split_sorted(idx, self.names, [self.offsets[n] for n in self.names], self._bounds)

    def masks_from_indices(self, flat_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-name boolean masks (fresh tensors) with True at the given global flat indices."""
        out = {}
        for n, local in self.split_indices(flat_indices).items():
            m = torch.zeros(self.shapes[n].numel(), dtype=torch.bool, device=self.data.device)
            m[local] = True
            out[n] = m.view(self.shapes[n])
        return out

    def __repr__(self) -> str:
        return f"FlatBuffer(numel={self.numel}, dtype={self.dtype}, device={self.device}, names={len(self.names)})"
