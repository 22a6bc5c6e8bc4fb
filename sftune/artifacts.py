"""The run directory: what a run writes, always atomically.

    config.yaml            the resolved configuration (re-usable with `sftune train --config`)
    manifest.json          versions, git commit, hardware, seed, data fingerprints, timings, status
    metrics.jsonl          one JSON record per logged step and per evaluation
    results.json           final metrics, trainable counts, sparsity totals (written last)
    predictions/<split>.jsonl   per-example predictions of the final model
    model/                 final weights (safetensors) with config and tokenizer
    checkpoint/            latest resumable state (weights, optimizer, scheduler, RNG, method state)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sftune import __version__
from sftune.errors import UsageError


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should be readable like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def match_umask(*paths: Path) -> None:
    """Give files written by libraries that create them 0600 (safetensors) the mode of every other file."""
    for path in paths:
        os.chmod(path, 0o666 & ~_UMASK)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place (old copy removed only after the new one is in)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a killed process: everything before it is intact
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    manifest = property(lambda self: self.path / "manifest.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    checkpoint = property(lambda self: self.path / "checkpoint")
    model = property(lambda self: self.path / "model")
    predictions = property(lambda self: self.path / "predictions")

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def is_complete(self) -> bool:
        if not self.results.is_file():
            return False
        try:
            return json.loads(self.results.read_text()).get("status") == "complete"
        except (OSError, json.JSONDecodeError):
            return False

    def check_usable(self, resume: bool, overwrite: bool) -> None:
        """Refuse a non-empty directory unless the user said what to do with it."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output path {self.path} is a file. Choose a directory with --output-dir.")
        if resume and overwrite:
            raise UsageError("--resume and --overwrite exclude each other. Choose one.")
        if not self.is_empty() and not (resume or overwrite):
            raise UsageError(f"output directory {self.path} is not empty. Pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --output-dir.")
        if resume and not self.config.is_file():
            raise UsageError(f"cannot resume {self.path}: it has no config.yaml. Start a new run instead.")

    def clear(self) -> None:
        if self.path.exists():
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ records
    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop records written after the checkpoint so no step appears twice."""
        kept = [r for r in read_jsonl(self.metrics) if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write_predictions(self, split: str, rows: list[dict]) -> Path:
        path = self.predictions / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))
        return path


# ------------------------------------------------------------------------------------------------ manifest
PACKAGES = ("torch", "transformers", "datasets", "accelerate", "safetensors", "typer", "rich", "scikit-learn",
            "scipy", "numpy", "pyyaml")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the sftune checkout, if it runs from one (editable installs)."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return (commit + ("-dirty" if dirty.stdout.strip() else "")) if commit else None


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def new_manifest(seed: int, data_fingerprints: list[dict]) -> dict[str, Any]:
    return {
        "sftune_version": __version__,
        "git_commit": git_commit(),
        "command": sys.argv,
        "packages": package_versions(),
        "hardware": hardware(),
        "seed": seed,
        "data": data_fingerprints,
        "timings": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "status": "running",
    }
