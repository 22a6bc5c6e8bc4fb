"""AdamW with the usual BERT grouping (or the optimizer a method owns), and the warmup + decay schedule from
transformers."""

from __future__ import annotations

import math

import torch
from torch import nn

from sftune.config import TrainConfig
from sftune.methods.base import Method


def no_decay(name: str, group: str) -> bool:
    """Biases and LayerNorm parameters get no weight decay (BERT's recipe, kept by every reference code)."""
    return name.endswith("bias") or group == "layernorm"


def param_groups(model: nn.Module, groups: dict[str, str], cfg: TrainConfig) -> list[dict]:
    """One optimizer group per trainable parameter: plugins (layer-wise LR decay) can then set its lr freely."""
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        out.append({"params": [p], "names": [name], "lr": cfg.lr,
                    "weight_decay": 0.0 if no_decay(name, groups[name]) else cfg.weight_decay})
    return out


def merge_groups(groups: list[dict]) -> list[dict]:
    """Merge groups with equal hyperparameters: fewer groups, faster (fused) steps."""
    merged: dict[tuple, dict] = {}
    for g in groups:
        key = tuple(sorted((k, v) for k, v in g.items() if k not in ("params", "names")))
        if key in merged:
            merged[key]["params"] += g["params"]
            merged[key]["names"] += g["names"]
        else:
            merged[key] = {**g, "params": list(g["params"]), "names": list(g["names"])}
    return list(merged.values())


def make_optimizer(groups: list[dict], cfg: TrainConfig, method: Method) -> torch.optim.Optimizer:
    """The method's own optimizer if its updates need one (update mode's MaskedAdamW), else AdamW."""
    adamw = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_eps}
    params = [p for g in groups for p in g["params"]]
    # torch's default per-tensor AdamW loop costs ~5x the fused kernel on CPU (performance-notes.md).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    own = method.own_optimizer(groups, fused=fused, **adamw)
    return own if own is not None else torch.optim.AdamW(groups, **adamw, fused=fused or None)


def total_steps(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    """(total optimizer steps, optimizer steps per epoch)."""
    micro = cfg.batch_size // cfg.grad_accum
    per_epoch = max(1, math.ceil(math.ceil(n_train / micro) / cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))
    return total, per_epoch


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * steps)
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
