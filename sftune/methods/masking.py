"""The shared machinery of mask-based methods: which parameters are candidates, how a step's masks are
applied in each mask mode, and what is counted.

A subclass implements

    candidate(name, param) -> bool     entries of these parameters are selected; the rest train densely
    select(step) -> selection          this step's masks, in one of three forms:
        dict[name, mask]               per parameter: a bool tensor shaped like it, or a 1-D int64 tensor of
                                       its flat indices; a candidate missing from the dict trains densely
                                       this step (DPS Stage I)
        FlatIndices(indices)           ascending int64 indices into the candidates laid end to end, in
                                       candidate order (Random, Top, Stochastic Tuning)
        FlatMask(buffer)               a bool FlatBuffer over the same layout (Child-Tuning), `applied=True`
                                       if select() already multiplied the gradients by it

and this base class applies them (methods.md section 0):

* `grad` mode (reference): `g <- g * M` where the authors' code does it. AdamW's momentum and decoupled
  weight decay still move unselected entries.
* `update` mode (exact): the masks go to `MaskedAdamW`, which updates only selected entries (their moments,
  bias correction and weight decay only), so exactly the selected entries change. The gradient is masked
  too, at the same place as in grad mode, so clipping sees the same norm in both modes (sftune choice).

Where: by default after backward and before clipping (DPS, Random/Top/Stochastic Tuning: the clip sees the
masked gradient). A method with `mask_after_clip` (Child-Tuning, whose reference masks inside
`optimizer.step()`) selects and masks in `after_clip`: the clip sees the full gradient (methods.md section 0).

A flat selection is applied to the flat gradient buffer (`flat_grads.py`) when the method declares
`flat_capable` and the run uses one: a few kernels for the whole model instead of a few per parameter.
Otherwise it is split per parameter. `masks` (per parameter) is derived on demand: the counts on logged
steps, update mode and the multi-process mask check read it. Flat indices are split in place and then held
in that form only, so a step's selection is held once (k int64 indices until the next step).
"""

from __future__ import annotations

from typing import Any

import torch

from sftune.methods.base import Method, RunContext, torch_optimizer
from sftune.methods.flat_grads import FlatGrads, wanted
from sftune.optim import MaskedAdamW
from sftune.select import FlatBuffer, split_sorted

_UNCHECKED = object()  # flat_grad() outside select_and_mask: check the gradient views now


class FlatIndices:
    """Selected entries as ascending indices into the candidates laid end to end (candidate order)."""

    def __init__(self, indices: torch.Tensor):
        self.indices = indices

    def apply_(self, flat_grad: torch.Tensor) -> None:
        kept = flat_grad.index_select(0, self.indices)
        flat_grad.zero_()
        flat_grad.index_copy_(0, self.indices, kept)


class FlatMask:
    """Selected entries as a bool FlatBuffer over the candidates (views per parameter)."""

    def __init__(self, buffer: FlatBuffer, applied: bool = False):
        self.buffer, self.applied = buffer, applied

    def apply_(self, flat_grad: torch.Tensor) -> None:
        if not self.applied:
            flat_grad.mul_(self.buffer.data)


class MaskedMethod(Method):
    selects_per_step = True
    flat_capable = False  # select() returns FlatIndices / FlatMask, which the flat gradient buffer can take
    mask_after_clip = False  # select and mask after clipping the full gradient (the reference's order)

    def candidate(self, name: str, param: torch.nn.Parameter) -> bool:
        raise NotImplementedError

    def select(self, step: int) -> dict[str, torch.Tensor] | FlatIndices | FlatMask:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.params = {n: p for n, p in ctx.model.named_parameters()}
        self.candidates = {n: p for n, p in self.params.items() if self.candidate(n, p)}
        self._masks: dict[str, torch.Tensor] | None = {}
        self._selection = None
        self.optimizer = None
        setting = getattr(ctx.config.train, "flat_grads", "off")
        use = (self.flat_capable and self.candidates and FlatGrads.supported(self.candidates)
               and wanted(setting, next(iter(self.candidates.values())).device, ctx.accelerator.num_processes))
        self.flat_grads = FlatGrads(self.candidates) if use else None
        self._step_flat_grad = _UNCHECKED  # inside select_and_mask: this step's one check of the views
        self._starts: list[int] = []  # where each candidate starts in the flat layout (split(), on first use)
        self._bounds: torch.Tensor | None = None

    def own_optimizer(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                      fused: bool) -> torch.optim.Optimizer | None:
        """Update mode: exact sparse updates, only selected entries change (moments, bias correction and weight
        decay there only). Grad mode: the standard AdamW."""
        if self.mask_mode != "update":
            return None
        return MaskedAdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)

    def on_optimizer(self, optimizer) -> None:
        if self.mask_mode == "update":
            optimizer = torch_optimizer(optimizer)
            if not isinstance(optimizer, MaskedAdamW):  # a caller that did not ask own_optimizer()
                raise RuntimeError(f"{self.name}: update mode steps the MaskedAdamW of own_optimizer(), "
                                   f"got {type(optimizer).__name__}")
            self.optimizer = optimizer

    def before_forward(self, step: int) -> None:
        if self.flat_grads is not None:
            self.flat_grads.attach()

    def after_backward(self, step: int) -> None:
        fg = self.flat_grads
        if fg is not None and fg.buffer is None:
            fg.build()  # the first step ran with ordinary gradients: it showed which candidates get one
        if not self.mask_after_clip:
            self.select_and_mask(step)

    def after_clip(self, step: int) -> None:
        if self.mask_after_clip:
            self.select_and_mask(step)

    def select_and_mask(self, step: int) -> None:
        """This step's selection, applied to the gradients (and, in update mode, given to the optimizer)."""
        # The views are checked once for the whole step (a pointer comparison per candidate): select() and
        # the scores read the answer through flat_grad() instead of repeating the check.
        self._step_flat_grad = flat = self._check_flat_grad()
        try:
            self.set_selection(self.select(step))
        finally:
            self._step_flat_grad = _UNCHECKED
        # Both modes zero the gradient outside the mask here, so clipping sees the same norm in both.
        sel = self._selection
        if isinstance(sel, (FlatIndices, FlatMask)) and flat is not None:
            sel.apply_(flat)
        elif not (isinstance(sel, FlatMask) and sel.applied):
            pairs = [(self.candidates[n].grad, m) for n, m in self.masks.items() if self.candidates[n].grad is not None]
            bool_pairs = [(g, m) for g, m in pairs if m.dtype == torch.bool]
            if bool_pairs:  # one multi-tensor call (a loop in C++: on a GPU, no Python per parameter)
                torch._foreach_mul_([g for g, _ in bool_pairs], [m for _, m in bool_pairs])
            for grad, mask in pairs:
                if mask.dtype != torch.bool:
                    apply_mask_(grad, mask)
        if self.mask_mode == "update":
            for name, p in self.candidates.items():
                if p.requires_grad:
                    self.optimizer.set_mask(p, self.masks.get(name))

    def flat_grad(self) -> torch.Tensor | None:
        """The candidates' gradients as one flat tensor, if this step's gradients are the flat buffer's views."""
        flat = self._step_flat_grad
        return self._check_flat_grad() if flat is _UNCHECKED else flat

    def _check_flat_grad(self) -> torch.Tensor | None:
        fg = self.flat_grads
        return fg.data if fg is not None and fg.holds_grads() else None

    # ------------------------------------------------------------------------------------------- masks
    def set_selection(self, selection) -> None:
        self._selection = selection
        self._masks = selection if isinstance(selection, dict) else None

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """This step's masks per parameter (split from a flat selection on first use)."""
        if self._masks is None:
            selection = self._selection
            if isinstance(selection, FlatIndices):
                # Split in place (views of the one index tensor) and keep only the split: the flat form is
                # applied by now, and a split copy beside it held a second k-sized int64 tensor until the
                # next step (twice the method state of the estimate, measured on SmolLM2-135M).
                self._masks = self.split(selection.indices, in_place=True)
                self._selection = self._masks
            else:
                self._masks = self.masks_of(selection)
        return self._masks

    def masks_of(self, selection) -> dict[str, torch.Tensor]:
        """Any form of selection as masks per parameter (bool tensors or flat indices)."""
        if isinstance(selection, FlatIndices):
            return self.split(selection.indices)
        if isinstance(selection, FlatMask):
            return dict(selection.buffer.views)
        return selection

    @masks.setter
    def masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.set_selection(masks)

    def split(self, flat_indices: torch.Tensor, in_place: bool = False) -> dict[str, torch.Tensor]:
        """Ascending indices into the concatenated candidates -> per-parameter flat indices (one host sync);
        `in_place`: views of `flat_indices`, overwritten."""
        if self._bounds is None:
            sizes = torch.tensor([p.numel() for p in self.candidates.values()])
            starts = torch.cumsum(sizes, 0) - sizes
            self._starts = starts.tolist()
            device = next(iter(self.candidates.values())).device
            self._bounds = torch.cat([starts, sizes.sum().view(1)]).to(device)
        return split_sorted(flat_indices.reshape(-1), list(self.candidates), self._starts, self._bounds,
                            in_place=in_place)

    # ------------------------------------------------------------------------------------------ counts
    def masked_numel(self) -> int:
        """Candidate entries that train (another plug-in may have frozen some candidates)."""
        return sum(p.numel() for p in self.candidates.values() if p.requires_grad)

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int] | None:
        return None  # a masked method's state is its own: not modelled unless it says

    def selected_counts(self) -> dict[str, torch.Tensor | int]:
        """Entries selected in the last step, per parameter (on the device; summed by the caller)."""
        out: dict[str, Any] = {}
        masks = self.masks
        for name, p in self.params.items():
            if not p.requires_grad:
                continue
            mask = masks.get(name) if name in self.candidates else None
            if mask is None:
                out[name] = p.numel()
            elif mask.dtype == torch.bool:
                out[name] = mask.sum()
            else:
                out[name] = mask.numel()
        return out


def apply_mask_(grad: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the gradient outside the mask, in place."""
    if mask.dtype == torch.bool:
        # In place by the bool tensor: no float copy of the mask (measured ~12% faster than multiplying by
        # mask.to(grad.dtype) on this CPU, and it reads 1 B per entry instead of writing and reading 4).
        grad.mul_(mask)
        return
    flat = grad.view(-1)
    kept = flat.index_select(0, mask)
    flat.zero_()
    flat.index_copy_(0, mask, kept)
