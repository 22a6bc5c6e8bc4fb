"""What the training loop reports while it runs (`Reporter`) and the counters it checkpoints (`TrainerState`)."""

from __future__ import annotations

from dataclasses import dataclass, field


class Reporter:
    """Receives progress; the CLI renders it (Rich table, plain lines or nothing)."""

    def start(self, info: dict) -> None: ...
    def step(self, progress: dict) -> None: ...  # every optimizer step: step, loss since the last log, lr
    def evaluating(self, step: int) -> None: ...  # an evaluation begins (its record follows through log)
    def log(self, record: dict) -> None: ...
    def finish(self, results: dict) -> None: ...


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint (trainer_state.json) and restored by a resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    examples: int = 0
    train_seconds: float = 0.0
    last_eval: dict = field(default_factory=dict)


class Interrupted(Exception):
    """Training stopped by Ctrl-C after a checkpoint was written."""
