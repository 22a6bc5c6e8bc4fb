"""Build and run a Trainer on a tiny model in-process, recording every step's masks."""

from __future__ import annotations

import torch

from sftune.config import build
from sftune.engine.loop import Trainer


def make_trainer(model_path, glue_dir, method: str, mask_mode: str = "grad", steps: int = 4,
                 regs: list[dict] | None = None, **sets) -> Trainer:
    tree = {"model": {"name": str(model_path)}, "task": "rte",
            "method": {"name": method, "mask_mode": mask_mode},
            "data": {"data_dir": str(glue_dir), "train_size": 32, "eval_batch_size": 128},
            "train": {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                      "log_every": 1}}
    if regs:
        tree["regs"] = regs
    for key, value in sets.items():
        section, _, field = key.partition("__")
        tree.setdefault(section, {})[field] = value
    trainer = Trainer(build(tree))
    trainer.build()
    return trainer


def record_masks(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Wrap the method's select() so every step's masks are kept (as bool masks shaped like the params)."""
    steps: list[dict[str, torch.Tensor]] = []
    method = trainer.method
    original = method.select

    def select(step):
        selection = original(step)
        dense = {}
        for name, mask in method.masks_of(selection).items():
            p = method.candidates[name]
            if mask.dtype == torch.bool:
                dense[name] = mask.clone()
            else:
                m = torch.zeros(p.numel(), dtype=torch.bool)
                m[mask] = True
                dense[name] = m.view(p.shape)
        steps.append(dense)
        return selection

    method.select = select
    return steps


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
