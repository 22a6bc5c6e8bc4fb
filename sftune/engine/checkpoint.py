"""Resumable checkpoints: weights in safetensors, everything else as tensors loaded with weights_only=True."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from sftune.artifacts import atomic_write_json, match_umask, replace_dir, saving
from sftune.errors import UsageError


def save_checkpoint(path: Path, model, optimizer, scheduler, plugins: list, state: dict[str, Any],
                    rng: dict[str, Any]) -> None:
    """Write into `<path>.tmp` and swap it in, so a crash mid-save leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        with saving(tmp / "model.safetensors"):
            save_model(model, str(tmp / "model.safetensors"))  # handles tied weights (BART embeddings)
        match_umask(tmp / "model.safetensors")
        with saving(tmp / "state.pt"):
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "plugins": [p.state_dict() for p in plugins], "rng": rng}, tmp / "state.pt")
        atomic_write_json(tmp / "trainer_state.json", state)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save (full disk) leaves no checkpoint.tmp/


def load_checkpoint(path: Path, model, optimizer, scheduler, plugins: list) -> tuple[dict, dict]:
    """Restore in place; returns (trainer state, RNG states)."""
    load_model(model, str(path / "model.safetensors"))
    try:
        blob = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise UsageError(f"checkpoint {path / 'state.pt'} holds Python objects besides tensors; sftune never loads "
                         "those (unpickling can run code). Start over with --overwrite, or restore the "
                         "checkpoint sftune wrote.") from None
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    for plugin, state in zip(plugins, blob["plugins"]):
        plugin.load_state_dict(state)
    return json.loads((path / "trainer_state.json").read_text()), blob["rng"]


def capture_rng() -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
