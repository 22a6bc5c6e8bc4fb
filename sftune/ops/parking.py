"""Park tensors on disk while they are not needed, and bring them back bit for bit.

DPS Mix needs the starting weights W0 only in Stage I (Mixout towards W0). Keeping them resident through
every Stage II costs 4 B per masked weight on top of Stage II's own state; writing them once to an unlinked
temporary file and reading them back at each Stage I start costs one sequential write per run and one read
per cycle (usually from the page cache), and no memory during Stage II.

The file holds raw bytes (no format, no pickle): a tensor is read back into a fresh tensor of the recorded
shape, dtype and device, so the round trip is exact for every dtype. The file is created with
`tempfile.TemporaryFile` in `directory` (default $TMPDIR): it has no name on disk and disappears when the
process ends, however it ends. Where $TMPDIR is a RAM disk (tmpfs) parking saves nothing; point `directory`
(or TMPDIR) at a real disk.
"""

from __future__ import annotations

import tempfile

import torch


class ParkedTensors:
    """`park(tensors)` writes a dict of tensors once; `load()` returns new copies of them, as often as needed."""

    def __init__(self, directory: str | None = None):
        self.directory = directory
        self._file = None
        self._index: dict[str, tuple[int, torch.Size, torch.dtype, torch.device]] = {}

    @property
    def parked(self) -> bool:
        return self._file is not None

    def park(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write `tensors` (once: a second call with the same names is a no-op, the bytes are already there)."""
        if self._file is not None:
            if set(tensors) != set(self._index):
                raise ValueError("ParkedTensors holds other tensors; use a new instance")
            return
        f = tempfile.TemporaryFile(dir=self.directory)
        offset = 0
        for name, t in tensors.items():
            cpu = t.detach().to("cpu").contiguous()
            raw = cpu.reshape(-1).view(torch.uint8).numpy()  # the tensor's bytes, any dtype
            f.write(memoryview(raw))
            self._index[name] = (offset, t.shape, t.dtype, t.device)
            offset += raw.nbytes
        f.flush()
        self._file = f

    def load(self) -> dict[str, torch.Tensor]:
        """Fresh tensors equal (bitwise) to the parked ones, each on its original device."""
        if self._file is None:
            raise RuntimeError("nothing parked")
        out = {}
        for name, (offset, shape, dtype, device) in self._index.items():
            cpu = torch.empty(shape, dtype=dtype)
            view = cpu.reshape(-1).view(torch.uint8).numpy()
            self._file.seek(offset)
            if self._file.readinto(memoryview(view)) != view.nbytes:
                raise OSError(f"parked tensor {name}: short read from the temporary file")
            out[name] = cpu if device.type == "cpu" else cpu.to(device)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._index = {}
