"""Memory of this process, for a cell's peak: resident memory on CPU, allocated memory on CUDA.

On CPU the peak is the high-water mark of resident memory (VmHWM, reset to the current VmRSS through
/proc/self/clear_refs; ru_maxrss where /proc cannot reset it), and glibc is told how to hand freed memory
back to the OS (`trim_heap`, `fix_mmap_threshold`) so that the high-water mark is what was live, not what the
allocator kept. On CUDA it is `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
"""

from __future__ import annotations

import gc
import resource

import torch


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_hwm() -> bool:
    """Reset this process's peak resident memory (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the baseline is not inflated by freed warm-up."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Meter:
    """Peak memory of the process from a baseline, on CPU or CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        trim_heap()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.source = "torch.cuda.max_memory_allocated"
            return
        self.baseline = rss_bytes()
        if reset_hwm():
            self.source = "VmHWM"
        else:  # no resettable high-water mark: the lifetime peak, which includes the warm-up (small)
            self.source = "ru_maxrss"

    def peak(self) -> dict[str, int | str]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return {"peak": torch.cuda.max_memory_allocated(self.device) - self.baseline,
                    "peak_reserved": torch.cuda.max_memory_reserved(self.device),
                    "baseline": self.baseline, "source": self.source}
        if self.source == "VmHWM":
            high = (_status_kb("VmHWM") or 0) * 1024
        else:
            high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak": high - self.baseline, "baseline": self.baseline, "source": self.source,
                "peak_rss": high}


RUN_MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc's dynamic threshold rises to on 64-bit (timed steps)


def fix_mmap_threshold(nbytes: int = 16 * 1024, trim: int | None = None) -> bool:
    """glibc: serve every allocation of at least `nbytes` from its own mapping, returned to the OS when freed,
    and trim the heap top beyond `trim` (default `nbytes`). glibc otherwise raises the threshold as large
    blocks are freed and keeps freed memory in its heap, so the resident peak would include what the allocator
    retained rather than what was live. The price is time: every large temporary is a fresh mapping whose
    pages the kernel zeroes, so the timed steps run with the threshold back at its dynamic maximum."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1
        return bool(libc.mallopt(-3, nbytes)) and bool(libc.mallopt(-1, trim if trim is not None else nbytes))
    except (OSError, AttributeError):
        return False
