"""Importance scores of Stochastic and Top Tuning: I = |mu * W * g| (methods.md section 4).

`mu` for an nn.Linear is the mean of |x_j| over the batch and the non-padding tokens of its input, one value
per input feature, broadcast over output rows (sftune choice; `signed` uses the signed mean). For biases the
input is 1 (I = |b * g|); a LayerNorm weight uses mu = mean |x_hat| of its normalised input; a LayerNorm
bias uses I = |beta * g|. An RMSNorm weight (Llama, Qwen, Mistral) uses mu = mean |x / rms(x)|; GPT-2's Conv1D
stores its weight [in, out], so its mu broadcasts over columns instead of rows. mu is the mean over every
non-padding token of the optimizer step: with gradient accumulation and across the ranks of a multi-process
run, token-weighted sums and counts are added up, so mu is the same however the step's batch is split.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from sftune.architecture import is_norm, norm_eps, norm_kind
from sftune.select import BlockWeights
from sftune.select.blocks import _level_sums  # the sampler's own block sums, so both sides agree bitwise


class InputMeans:
    """Forward hooks that keep the running mean |input| per feature of chosen Linear and LayerNorm modules."""

    def __init__(self, model: nn.Module, module_names: set[str], signed: bool = False):
        self.signed = signed
        self.module_names = set(module_names)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.attention_mask: torch.Tensor | None = None
        self._last: tuple | None = None  # (weak ref to the last input, its version and kind, sum, count)
        self._repeats: dict[tuple[int, ...], torch.Tensor] = {}  # pop_all's per-module sizes, on the device
        self.handles = [model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)]
        self.kinds: dict[str, str] = {}  # module name -> layernorm / rmsnorm / projection (what the hook normalises)
        for name, module in model.named_modules():
            if name in module_names:
                self.kinds[name] = norm_kind(module) if is_norm(module) else "projection"
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _capture_mask(self, module, args, kwargs):
        self.attention_mask = kwargs.get("attention_mask")
        self._last = None  # a new forward pass: never reuse a mean across passes

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not module.training or not torch.is_grad_enabled():
                return
            # Query, key and value read the same tensor object: compute its mean once and reuse it. A weak
            # reference (not an address, which a freed tensor's successor may reuse) identifies it.
            source, kind = inputs[0], self.kinds[name]
            last = self._last
            if last is not None and last[0]() is source and last[1] == (source._version, kind):
                self._add(name, last[2], last[3])
                return
            x = source.detach()
            if kind == "layernorm":
                shape = getattr(module, "normalized_shape", x.shape[-1:])
                x = F.layer_norm(x.float(), shape, None, None, norm_eps(module))
            elif kind == "rmsnorm":  # as LlamaRMSNorm computes it, without the weight
                x = x.float()
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(module))
            x = x.float() if self.signed else x.float().abs()
            mask = self.attention_mask
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                w = mask.to(x.dtype).reshape(1, -1)  # token weights: a matrix-vector product, no x-sized temporary
                total, count = (w @ x.reshape(w.shape[1], -1)).squeeze(0), w.sum()
            else:  # pooled [batch, features] inputs, or shapes that are not [batch, tokens, features]
                flat = x.reshape(-1, x.shape[-1])
                total, count = flat.sum(0), torch.tensor(float(flat.shape[0]), device=x.device)
            self._last = (weakref.ref(source), (source._version, kind), total, count)
            self._add(name, total, count)

        return hook

    def _add(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        if name in self.sums:
            self.sums[name] = self.sums[name] + total
            self.counts[name] = self.counts[name] + count
        else:
            self.sums[name], self.counts[name] = total, count

    def all_reduce(self, accelerator) -> None:
        """Add up the pending sums and token counts of all ranks (one collective), so every rank scores alike."""
        if accelerator.num_processes < 2 or not self.sums:
            return
        names = sorted(self.sums)
        flat = torch.cat([torch.cat([self.sums[n], self.counts[n].view(1)]) for n in names])
        flat = accelerator.reduce(flat, reduction="sum")
        offset = 0
        for n in names:
            size = self.sums[n].numel()
            self.sums[n], self.counts[n] = flat[offset:offset + size], flat[offset + size]
            offset += size + 1

    def pop(self, name: str) -> torch.Tensor | None:
        """The mean over the micro-batches since the last pop (None if the module did not run)."""
        if name not in self.sums:
            return None
        out = self.sums.pop(name) / self.counts.pop(name).clamp_min(1)
        return out.abs() if not self.signed else out

    def pop_all(self, names: list[str]) -> dict[str, torch.Tensor]:
        """`pop` for many modules at once, in a handful of kernels instead of a few per module (on a GPU each
        is a launch); bitwise the same values. Modules that did not run are left out."""
        present = [n for n in names if n in self.sums]
        if not present:
            return {}
        sizes = [self.sums[n].numel() for n in present]
        sums = torch.cat([self.sums.pop(n) for n in present])
        counts = torch.stack([self.counts.pop(n).reshape(()) for n in present]).clamp_min(1)
        key = tuple(sizes)
        repeats = self._repeats.get(key)
        if repeats is None:  # cached: a fresh host-to-device copy every step would cost a transfer each time
            repeats = self._repeats[key] = torch.tensor(sizes, device=sums.device)
        out = sums / torch.repeat_interleave(counts, repeats, output_size=sums.numel())
        out = out.abs() if not self.signed else out
        return dict(zip(present, out.split(sizes)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def squared_importance_(out: torch.Tensor, kind: str, param: torch.Tensor, grad: torch.Tensor,
                        mu: torch.Tensor | None) -> torch.Tensor:
    """Write I^2 = (mu * W * g)^2 (sampling weights are proportional to I^2) into `out`, in place."""
    torch.mul(param.detach(), grad, out=out)
    return _times_mu_squared_(out, kind, mu, lambda m: mu_view(kind, m))


# Kinds of candidate whose importance has a per-input-feature mu (the others: I = |p * g|).
MU_KINDS = ("linear_weight", "conv1d_weight", "ln_weight")


def mu_view(kind: str, mu: torch.Tensor) -> torch.Tensor:
    """mu shaped to broadcast over the parameter: per column of a Linear weight [out, in], per row of a
    Conv1D weight [in, out], per entry of a norm weight."""
    if kind == "linear_weight":
        return mu.unsqueeze(0)
    if kind == "conv1d_weight":
        return mu.unsqueeze(1)
    return mu


def _times_mu_squared_(values: torch.Tensor, kind: str, mu: torch.Tensor | None, pick) -> torch.Tensor:
    """values (= W * g) *= mu where the kind has one (Linear and LayerNorm weights), then squared, in place.
    `pick` takes mu (in values' dtype) to the entries of `values`: broadcast, or gathered."""
    if kind in MU_KINDS and mu is not None:
        values.mul_(pick(mu.to(values.dtype)))
    return values.square_()


class ImportanceWeights(BlockWeights):
    """I^2 of every candidate entry as the exact sampler reads it, computed from each parameter, its gradient
    and its input means on demand: one streaming pass for the block sums, a few blocks per draw. No
    n-sized buffer: the transient memory is the block sums (4 B per 32 entries) plus one parameter's
    scores at a time.

    Layout: the candidates in order, each padded with zeros to a multiple of `block` entries, so a block
    never straddles two parameters (`PaddedLayout`; `unpad` maps its indices to the flat gradient layout).
    The values are bitwise those `squared_importance_` writes (same operations in the same order).
    """

    def __init__(self, params: dict[str, torch.Tensor], kinds: dict[str, str], mus: dict[str, torch.Tensor | None],
                 layout: PaddedLayout):
        self.names = list(params)
        self.params, self.kinds, self.mus, self.layout = params, kinds, mus, layout
        self.block, self.padded, self.starts, self.numel = layout.block, layout.padded, layout.starts, layout.numel
        self.device = params[self.names[0]].device
        self.row_starts = torch.tensor([s // self.block for s in self.starts], device=self.device)
        self._sums: torch.Tensor | None = None

    def _scores(self, name: str, out: torch.Tensor) -> torch.Tensor:
        p = self.params[name]
        if p.grad is None:
            return out.zero_()
        return squared_importance_(out.view(p.shape), self.kinds[name], p, p.grad, self.mus.get(name)).view(-1)

    def level_sums(self, B: int) -> torch.Tensor:
        """The block sums, computed on the first call; an instance is one step's scores, so
        later calls return the same tensor (which the sampler then updates in place)."""
        assert B == self.block, "the layout is padded for one block size"
        if self._sums is None:
            self._sums = self._compute_sums(B)
        return self._sums

    def _compute_sums(self, B: int) -> torch.Tensor:
        # Each parameter's scores zero-padded to whole blocks, summed as full rows of B: the same reduction a
        # padded flat tensor of the scores gets (`_level_sums`), so both give bitwise the same sums.
        scratch = torch.empty(max(self.padded), dtype=torch.float32, device=self.device)
        sums = []
        for name, padded in zip(self.names, self.padded):
            numel = self.params[name].numel()
            self._scores(name, scratch[:numel])
            scratch[numel:padded].zero_()
            sums.append(_level_sums(scratch[:padded], B))
        del scratch
        return torch.cat(sums)

    def count_positive(self, at_least: int) -> int:
        """The number of entries with I^2 > 0 if it is below `at_least`, else some number >= `at_least`: a
        block with a positive sum holds at least one positive entry, so counting blocks (n / 32 values)
        settles the usual case; entries are counted only when blocks do not suffice."""
        blocks = int(torch.count_nonzero(self.level_sums(self.block)))
        if blocks >= at_least:
            return blocks
        return int(torch.count_nonzero(self.dense()))

    def rows(self, row_ids: torch.Tensor, B: int) -> torch.Tensor:
        out = torch.zeros(row_ids.numel(), B, dtype=torch.float32, device=self.device)
        owner = torch.searchsorted(self.row_starts, row_ids, right=True) - 1
        bounds = torch.searchsorted(owner, torch.arange(len(self.names) + 1, device=self.device)).tolist()
        offsets = torch.arange(B, device=self.device)
        for i, name in enumerate(self.names):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            p = self.params[name]
            local = row_ids[lo:hi] - self.row_starts[i]
            if p.numel() % B == 0 and (self.kinds[name] not in ("linear_weight", "conv1d_weight")
                                       or p.shape[-1] % B == 0):
                out[lo:hi] = self._whole_rows(name, local, B)  # the common case: row gathers, no padding
                continue
            entries = (local * B).unsqueeze(1) + offsets  # flat positions, may pass the end
            valid = entries < p.numel()
            idx = entries.clamp(max=p.numel() - 1)
            out[lo:hi] = self._entries(name, idx).masked_fill_(~valid, 0.0)
        return out

    def _whole_rows(self, name: str, local: torch.Tensor, B: int) -> torch.Tensor:
        """I^2 of whole rows of B entries of a parameter whose size (and, for a Linear, input width) B divides."""
        p = self.params[name]
        if p.grad is None:
            return torch.zeros(local.numel(), B, dtype=torch.float32, device=self.device)
        values = p.detach().reshape(-1, B).index_select(0, local) * p.grad.reshape(-1, B).index_select(0, local)
        kind = self.kinds[name]
        if kind == "conv1d_weight":  # B divides the row length (out): a block lies in one input row
            rows = torch.div(local, p.shape[-1] // B, rounding_mode="floor")
            return _times_mu_squared_(values, kind, self.mus.get(name), lambda m: m.index_select(0, rows).unsqueeze(1))
        segment = local % (p.shape[-1] // B) if kind == "linear_weight" else local  # the rows' mu entries
        return _times_mu_squared_(values, kind, self.mus.get(name), lambda m: m.reshape(-1, B).index_select(0, segment))

    def _entries(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """I^2 at the flat positions `idx` of parameter `name` (any shape)."""
        p = self.params[name]
        if p.grad is None:
            return torch.zeros(idx.shape, dtype=torch.float32, device=self.device)
        values = p.detach().reshape(-1)[idx] * p.grad.reshape(-1)[idx]  # as squared_importance_, entry by entry
        kind = self.kinds[name]
        columns = (idx % p.shape[-1] if kind == "linear_weight" else
                   torch.div(idx, p.shape[-1], rounding_mode="floor") if kind == "conv1d_weight" else idx)
        return _times_mu_squared_(values, kind, self.mus.get(name), lambda m: m[columns])

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.rows(torch.div(idx, self.block, rounding_mode="floor"), self.block)
        return rows.gather(1, (idx % self.block).unsqueeze(1)).squeeze(1)

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        for name, start in zip(self.names, self.starts):
            self._scores(name, out[start:start + self.params[name].numel()])
        return out

    def padding(self) -> torch.Tensor:
        return self.layout.padding()

    def unpad(self, idx: torch.Tensor) -> torch.Tensor:
        return self.layout.unpad(idx)


class PaddedLayout:
    """Parameters laid end to end, each zero-padded to a multiple of `block` entries so that no block of the
    sampler straddles two of them. `unpad` maps indices of this layout to the packed layout (the candidates
    end to end without padding: the flat gradient layout); the map is increasing, so order is kept."""

    def __init__(self, sizes: list[int], block: int, device):
        self.sizes, self.block = sizes, block
        self.padded = [-(-s // block) * block for s in sizes]
        self.starts, shifts, start, packed = [], [], 0, 0
        for size, padded in zip(sizes, self.padded):
            self.starts.append(start)
            shifts.append(start - packed)
            start, packed = start + padded, packed + size
        self.numel = sum(self.padded)
        self._starts = torch.tensor(self.starts, device=device)
        self._shifts = torch.tensor(shifts, device=device)

    def unpad(self, idx: torch.Tensor) -> torch.Tensor:
        owner = torch.searchsorted(self._starts, idx, right=True) - 1
        return idx - self._shifts[owner]

    def padding(self) -> torch.Tensor:
        """Bool vector over the layout: True on the zero padding between parameters."""
        pad = torch.ones(self.numel, dtype=torch.bool, device=self._starts.device)
        for start, size in zip(self.starts, self.sizes):
            pad[start:start + size] = False
        return pad
