"""Multi-process helpers: the run's Accelerator, and the check that every rank selects the same subnetwork
every step.

Masks are computed on each rank from the all-reduced gradients with identically seeded generators, so they
agree by construction; `MaskCheck` verifies it cheaply. A step's masks are reduced to a small hash (per
parameter: the number of selected entries and a position-weighted checksum), gathered from every rank and
compared; a divergence stops the run with the step and the parameters that differ. Fixed masks (Child-Tuning D,
DPS Stage II) are hashed only when they change, so the check costs one tiny all-gather per step.
"""

from __future__ import annotations

import atexit
import json
import weakref
from pathlib import Path

import torch

from sftune.config import TrainConfig
from sftune.errors import UsageError

_PRIME = 2_147_483_629  # keeps the checksum in int64 range


def make_accelerator(cfg: TrainConfig, need_train: bool):
    """The run's Accelerator. split_batches: batch_size is the global batch whatever the number of processes, so a
    run on N processes takes the same optimizer steps as on one (and its masks come from the same gradients)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=cfg.cpu, gradient_accumulation_steps=cfg.grad_accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    micro, world = cfg.batch_size // cfg.grad_accum, accelerator.num_processes
    if world > 1:
        atexit.unregister(leave_process_group)  # once, however many accelerators a process builds
        atexit.register(leave_process_group)
    if need_train and micro % world:
        raise UsageError(f"train.batch_size / train.grad_accum = {micro} must be divisible by the {world} processes "
                         "(each takes an equal share of every batch).")
    return accelerator


def leave_process_group() -> None:
    """Tear the process group down before the interpreter exits, as torch asks of every distributed program
    (NCCL warns when its process group is left to the interpreter's teardown, where native threads and
    connections are destroyed in no defined order)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mask_hash(mask: torch.Tensor) -> torch.Tensor:
    """[count, checksum] of a bool mask or of a flat index tensor (int64, on the mask's device)."""
    if mask.dtype == torch.bool:
        flat = mask.reshape(-1)
        idx = torch.nonzero(flat).squeeze(1)
    else:
        idx = mask.reshape(-1)
    count = torch.tensor(idx.numel(), dtype=torch.int64, device=idx.device)
    checksum = ((idx.to(torch.int64) % _PRIME) * 7919 + 13).remainder(_PRIME).sum().remainder(_PRIME)
    return torch.stack([count, checksum])


class MaskCheck:
    def __init__(self, accelerator, enabled: bool, log_dir: str | None):
        self.acc = accelerator
        self.enabled = enabled and accelerator.num_processes > 1
        self.log = Path(log_dir) / f"rank{accelerator.process_index}.jsonl" if log_dir else None
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[weakref.ref, int, torch.Tensor]] = {}

    def step_hash(self, masks: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
        names = sorted(masks)
        rows = []
        for name in names:
            mask = masks[name]
            # Recompute only when the mask changed: another tensor (a weak reference, because a freed tensor's
            # id can be reused by the next one) or the same one refilled in place (_version moves on).
            cached = self._cache.get(name)
            if cached is None or cached[0]() is not mask or cached[1] != mask._version:
                cached = (weakref.ref(mask), mask._version, mask_hash(mask))
                self._cache[name] = cached
            rows.append(cached[2])
        return names, (torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.int64))

    @property
    def active(self) -> bool:
        return bool(self.enabled or self.log)

    def check(self, step: int, masks: dict[str, torch.Tensor] | None) -> None:
        if masks is None or not self.active:
            return
        names, local = self.step_hash(masks)
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps({"step": step, "hash": dict(zip(names, local.tolist()))}) + "\n")
        if not self.enabled:
            return
        gathered = self.acc.gather(local.unsqueeze(0).to(self.acc.device))
        if not bool((gathered == gathered[0:1]).all()):
            bad = [names[i] for i in range(len(names)) if not bool((gathered[:, i] == gathered[0, i]).all())]
            raise RuntimeError(f"masks diverged across ranks at step {step} in {', '.join(bad[:5])}: the ranks "
                               "no longer train the same subnetwork (different seeds or non-deterministic "
                               "selection inputs)")
