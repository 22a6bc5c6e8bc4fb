"""Bernoulli masks and bit-packed boolean masks.

Bernoulli (Child-Tuning F draws a fresh Bernoulli(p) mask for every parameter every step): the obvious
``torch.bernoulli`` / ``rand < p`` spends one 32-bit draw and a float per entry. Here random 64-bit words
(``random_`` on int64, the cheapest bulk source of random bits in torch) are viewed as four 16-bit lanes
and compared with a threshold, straight into the caller's ``out`` buffer, in chunks that stay in cache;
on CPU the two halves of a large mask come from two generator streams filled concurrently (torch's CPU
generator is serial and the random bits are most of the cost). Measured at n = 125M on 2 CPU threads:
~130 ms for a float 0/1 mask (``Tensor.bernoulli_``: ~1.6 s).

Probability resolution: p is quantised to T / 65536 with T = round(65536 p) (16-bit lanes, ``bits=16``,
the default; |error| <= 7.6e-6, e.g. p = 0.3 -> 0.3000030). ``bits=32`` uses 32-bit lanes (resolution
2^-32) at twice the random-number cost. ``bits=8`` halves it (random bits dominate the cost on CPU) but
is coarse (0.3 -> 77/256 = 0.30078); if used, scale by the effective probability
``bernoulli_threshold(p, 8) / 256`` (not p) to keep ``g * M / p`` unbiased (the same expression with
bits=16 removes the residual 1e-5 bias too).

Bit packing (DPS keeps a mask per weight matrix for a whole stage): 1 bit per entry instead of 1 byte
(bool) or 8 (int64, as the reference does).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

import torch

__all__ = ["bernoulli_mask_", "bernoulli_dropout_", "bernoulli_threshold", "pack_bits", "unpack_bits", "BitMask"]

# Entries per chunk. CPU: random words (2 MiB) + output stay cache-resident. GPU: caches don't matter but
# kernel launches do, so few large chunks.
_CHUNK = {"cpu": 1 << 20}
_CHUNK_OTHER = 1 << 24


def bernoulli_threshold(p: float, bits: int = 16) -> int:
    """The integer threshold T: an entry is 1 iff its unsigned ``bits``-bit random lane is < T.

    Effective probability is exactly T / 2**bits.
    """
    if bits not in (8, 16, 32):
        raise ValueError("bits must be 8, 16 or 32")
    return int(round(min(max(float(p), 0.0), 1.0) * (1 << bits)))


def bernoulli_mask_(
    out: torch.Tensor,
    p: float,
    generator: torch.Generator,
    bits: int = 16,
    chunk_size: int | None = None,
    on_chunk: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Fill ``out`` (bool, uint8 or any floating dtype: values 0/1) with i.i.d. Bernoulli(p) draws, in place.

    Probability quantised to ``bernoulli_threshold(p, bits) / 2**bits`` (see module docstring). No
    n-sized temporaries: random words are drawn into chunk-sized scratch buffers (``chunk_size`` entries,
    default 2^20 on CPU, 2^24 elsewhere) and compared directly into ``out`` (``torch.lt(..., out=...)``
    writes bool or 0/1 floats). Returns ``out``.

    ``on_chunk(start, chunk)``, if given, is called with each filled chunk of the flattened ``out`` (a view)
    and its offset, while the chunk is still in cache (``bernoulli_dropout_`` masks gradients there). It may
    run on the worker thread below; the calls of each half come in order.

    Random stream: on CPU, for n >= 2^21 the entries are split into two fixed halves; the first half uses
    ``generator``, the second a child generator seeded from one draw of ``generator``. torch's CPU
    generator is serial, random bits dominate the cost, and the two halves are filled concurrently (about
    1.7x faster on 2 cores). The split depends only on n, so the mask is reproducible on any machine; within
    a half the stream is consumed in entry order, 64 bits per 64 / ``bits`` entries, so the mask does not
    depend on ``chunk_size`` (rounded to a multiple of 8 entries). On CUDA (Philox, advanced per launch)
    there is one stream and the mask does depend on ``chunk_size``.
    """
    T = bernoulli_threshold(p, bits)
    full = 1 << bits
    if T <= 0 or T >= full:
        out.fill_(0 if T <= 0 else 1)
        if on_chunk is not None:
            on_chunk(0, out.reshape(-1))
        return out
    if not out.is_contiguous():
        if on_chunk is not None:
            raise ValueError("on_chunk needs a contiguous tensor")
        tmp = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        bernoulli_mask_(tmp, p, generator, bits, chunk_size)
        return out.copy_(tmp)
    flat = out.view(-1)
    n = flat.numel()
    if chunk_size is None:
        chunk_size = _CHUNK.get(out.device.type, _CHUNK_OTHER)
    chunk = max(8, (int(chunk_size) // 8) * 8)
    # Signed lanes: the unsigned value u = s + 2^(bits-1), so u < T  <=>  s < T - 2^(bits-1).
    thr = T - (full >> 1)
    if out.device.type == "cpu" and n >= _SPLIT_MIN:
        half = ((n + 1) // 2 + 7) // 8 * 8
        seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
        child = torch.Generator().manual_seed(seed)
        fut = _pool().submit(_fill_bernoulli, flat[half:], thr, bits, chunk, child, on_chunk, half)
        _fill_bernoulli(flat[:half], thr, bits, chunk, generator, on_chunk, 0)
        fut.result()
    else:
        _fill_bernoulli(flat, thr, bits, chunk, generator, on_chunk, 0)
    return out


def bernoulli_dropout_(
    mask: torch.Tensor,
    p: float,
    generator: torch.Generator,
    targets: Sequence[tuple[int, torch.Tensor]],
    scale: float = 1.0,
    bits: int = 16,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Draw Bernoulli(p) into the contiguous bool ``mask`` (the very draws ``bernoulli_mask_`` makes from the
    same generator state) and multiply the ``targets`` by it, and by ``scale``, chunk by chunk while each
    chunk is in cache: Child-Tuning F's ``g <- g * M / p`` in one read and one write of every gradient entry
    instead of three passes. ``targets``: (offset, contiguous 1-D tensor) pairs in ascending offset order,
    each covering ``mask[offset : offset + numel]``; the mask is drawn whole whichever targets exist.
    Returns ``mask``.
    """
    offsets = [off for off, _ in targets]

    def apply(start: int, chunk: torch.Tensor) -> None:
        end = start + chunk.numel()
        for off, target in targets[max(0, bisect_right(offsets, start) - 1):]:
            if off >= end:
                break
            lo, hi = max(start, off), min(end, off + target.numel())
            if lo < hi:
                part = target[lo - off : hi - off]
                part.mul_(chunk[lo - start : hi - start])
                if scale != 1.0:
                    part.mul_(scale)

    return bernoulli_mask_(mask, p, generator, bits, chunk_size, on_chunk=apply)


# Entries below which the CPU stream is not split in two (the thread hand-off would cost more).
_SPLIT_MIN = 1 << 21
_executor = None


def _pool():
    """One worker thread (the caller's thread fills the other half). torch ops release the GIL."""
    global _executor
    if _executor is None:
        from concurrent.futures import ThreadPoolExecutor

        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftune-bernoulli")
    return _executor


def _fill_bernoulli(flat: torch.Tensor, thr: int, bits: int, chunk: int, generator: torch.Generator,
                    on_chunk: Callable[[int, torch.Tensor], None] | None = None, base: int = 0) -> None:
    n = flat.numel()
    if n == 0:
        return
    lane = {8: torch.int8, 16: torch.int16, 32: torch.int32}[bits]
    per_word = 64 // bits
    words = torch.empty((min(chunk, n) + per_word - 1) // per_word, dtype=torch.int64, device=flat.device)
    for start in range(0, n, chunk):
        L = min(chunk, n - start)
        wv = words[: (L + per_word - 1) // per_word]
        wv.random_(-(1 << 63), None, generator=generator)  # full 64-bit range: every bit uniform
        torch.lt(wv.view(lane)[:L], thr, out=flat[start : start + L])
        if on_chunk is not None:
            on_chunk(base + start, flat[start : start + L])


# --------------------------------------------------------------------------- bit packing
# Byte i of a little-endian int64 holding eight 0/1 bytes b0..b7 is b_i * 2^(8i). Multiplying by
# sum_j 2^(8j + 7 - j) puts b_i at bit 56 + i with no carries (the other partial products fall below bit 56
# or beyond bit 63), so the top byte is the packed byte, bit i = entry 8q + i (LSB first, like
# numpy.packbits(..., bitorder='little')). Wrapping int64 multiplication is what torch's CPU and CUDA
# kernels do; the round-trip test checks it.
_PACK_MAGIC = 0x0102040810204080
_SHIFTS: dict[str, torch.Tensor] = {}


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (any shape, flattened row-major) into uint8, 8 entries per byte.

    Entry i goes to bit (i % 8) of byte i // 8 (LSB first); the last byte is zero-padded.
    Returns ``ceil(numel / 8)`` bytes on the mask's device.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_bits expects a bool tensor, got {mask.dtype}")
    flat = mask.reshape(-1)
    n = flat.numel()
    n8 = n // 8
    out = torch.empty((n + 7) // 8, dtype=torch.uint8, device=mask.device)
    if n8:
        u8 = flat[: n8 * 8].view(torch.uint8)
        if u8.storage_offset() % 8:
            u8 = u8.clone()  # an int64 view needs 8-byte alignment
        x = u8.view(torch.int64)
        x = x * _PACK_MAGIC
        x = x.bitwise_right_shift_(56).bitwise_and_(0xFF)
        out[:n8].copy_(x)
    if n8 * 8 < n:
        tail = flat[n8 * 8 :].to(torch.uint8)
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
        out[n8] = (tail * weights[: tail.numel()]).sum().to(torch.uint8)
    return out


def unpack_bits(packed: torch.Tensor, numel: int, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of ``pack_bits``: a bool tensor of ``numel`` entries (reshaped to ``shape`` if given)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits expects uint8, got {packed.dtype}")
    if packed.numel() * 8 < numel:
        raise ValueError(f"{packed.numel()} bytes cannot hold {numel} bits")
    key = str(packed.device)
    shifts = _SHIFTS.get(key)
    if shifts is None:
        shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
        _SHIFTS[key] = shifts
    nbytes = (numel + 7) // 8
    bits = torch.bitwise_right_shift(packed[:nbytes].unsqueeze(1), shifts).bitwise_and_(1)
    out = bits.view(torch.bool).reshape(-1)[:numel]  # 0/1 bytes are valid bools
    return out.view(tuple(shape)) if shape is not None else out


class BitMask:
    """A boolean mask stored as packed bits (1 bit per entry) plus its shape.

    ``BitMask.from_bool(m).to_bool()`` round-trips exactly. ``state_dict()`` holds only a uint8 tensor and a
    list of ints, so it survives ``torch.save`` / ``torch.load(weights_only=True)``.
    """

    __slots__ = ("packed", "shape")

    def __init__(self, packed: torch.Tensor, shape: Sequence[int]):
        self.packed = packed
        self.shape = torch.Size(shape)
        if packed.numel() != (self.shape.numel() + 7) // 8:
            raise ValueError("packed size does not match shape")

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> BitMask:
        return cls(pack_bits(mask), mask.shape)

    def to_bool(self) -> torch.Tensor:
        return unpack_bits(self.packed, self.shape.numel(), self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def count(self) -> torch.Tensor:
        """Number of True entries (0-d int64 tensor; padding bits are always zero)."""
        lut = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8, device=self.device)
        return lut[self.packed.long()].sum()

    def to(self, device: torch.device | str) -> BitMask:
        return BitMask(self.packed.to(device), self.shape)

    def state_dict(self) -> dict:
        return {"packed": self.packed, "shape": list(self.shape)}

    @classmethod
    def from_state_dict(cls, state: dict) -> BitMask:
        return cls(state["packed"], state["shape"])

    def __repr__(self) -> str:
        return f"BitMask(shape={tuple(self.shape)}, bytes={self.nbytes})"
