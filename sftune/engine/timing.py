"""Per-phase step timing (forward, extra forwards, backward, selection, optimizer) for profiling.

Off by default: timing a phase on a GPU needs a device synchronisation, which costs throughput. The
profiler and the benchmarks turn it on with `Trainer.phases = PhaseTimer(device)`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    # hooks: the plug-ins' before_forward (DPS stage starts, Mixout draws), timed apart from the model's forward
    PHASES = ("hooks", "forward", "extra_loss", "backward", "selection", "optimizer")

    def __init__(self, device: torch.device | None = None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._open: dict[str, float] = {}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, phase: str):
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self._open[phase] = self._open.get(phase, 0.0) + time.perf_counter() - t0

    def end_step(self) -> None:
        """Close one optimizer step: phases seen in its micro-batches are summed into one value each."""
        for phase in self.PHASES:
            self.seconds[phase].append(self._open.get(phase, 0.0))
        self._open.clear()

    def medians(self, skip: int = 1) -> dict[str, float]:
        """Median seconds per phase, skipping the first `skip` steps (allocation and warm-up)."""
        out = {}
        for phase, values in self.seconds.items():
            vals = sorted(values[skip:] or values)
            out[phase] = vals[len(vals) // 2] if vals else 0.0
        return out


class NullTimer:
    @contextmanager
    def __call__(self, phase: str):
        yield

    def end_step(self) -> None:
        pass
