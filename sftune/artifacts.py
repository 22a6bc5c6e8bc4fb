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

import errno
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _name(e, path)
        raise


def match_umask(*paths: Path) -> None:
    """Give files written by libraries that create them 0600 (safetensors) the mode of every other file."""
    for path in paths:
        os.chmod(path, 0o666 & ~_UMASK)
def _name(e: BaseException, path: Path) -> BaseException:
    """A failed write() or flush() names no file: name it, so the one-line error says where."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = str(path)
    return e


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, to_json(data, indent=2) + "\n")


def to_json(data: Any, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinity (a diverged loss, a learning rate) is written as null, never as the
    bare NaN token that Python's json emits and other readers reject."""
    return json.dumps(_finite(data), indent=indent, default=_jsonable, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _finite(obj.tolist())
    return obj


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextmanager
def saving(path: Path):
    """Around a library's save (safetensors, tokenizers): its write failures become an OSError naming `path`,
    so the CLI reports them in one line like any other failed write."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
    except (SafetensorError, RuntimeError) as e:
        text = str(e)
        # torch.save reports a failed write as a RuntimeError from its zip writer; anything else is a bug.
        if isinstance(e, RuntimeError) and "PytorchStreamWriter" not in text and "write" not in text.lower():
            raise
        code = errno.ENOSPC if "No space" in text else errno.EIO
        cause = os.strerror(code) if code == errno.ENOSPC else " ".join(text.split())[:200]
        raise OSError(code, cause, str(path)) from None


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


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None when the file is missing, unreadable, torn or holds no object (callers
    treat all of these as "not written yet")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: a torn write (JSONDecodeError) or bytes that are not UTF-8
        return None
    return data if isinstance(data, dict) else None


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
        return not self.path.exists() or not any(p.name != LOCK_NAME for p in self.path.iterdir())

    def is_complete(self) -> bool:
        return self.final_status() == "complete"

    def final_status(self) -> str | None:
        """results.json's status (complete or diverged: the run is over), None while there is none."""
        return (read_json(self.results) or {}).get("status")

    def status(self) -> str | None:
        """The manifest's status (running, interrupted, failed, diverged, complete), None without a manifest."""
        return (read_json(self.manifest) or {}).get("status")

    def made_by_sftune(self) -> bool:
        """A directory sftune wrote holds its manifest (with sftune's version in it), or only what a run killed
        before writing the manifest leaves: config.yaml, the lock and atomic writes' temporary files."""
        if "sftune_version" in (read_json(self.manifest) or {}):
            return True
        early = ("config.yaml", LOCK_NAME)
        return all(p.name in early or p.name.startswith((".config.yaml.", ".manifest.json."))
                   for p in self.path.iterdir())

    def check_usable(self, resume: bool, overwrite: bool) -> None:
        """Refuse a non-empty directory unless the user said what to do with it."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output path {self.path} is a file. Choose a directory with --output-dir.")
        if resume and overwrite:
            raise UsageError("--resume and --overwrite exclude each other. Choose one.")
        if not self.is_empty() and not (resume or overwrite):
            raise UsageError(f"output directory {self.path} is not empty. Pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --output-dir.")
        if overwrite and not self.is_empty() and not self.made_by_sftune():
            raise UsageError(f"--overwrite: {self.path} was not written by sftune (it has no sftune "
                             "manifest.json), so it is left untouched. Choose another --output-dir, or empty it "
                             "yourself.")
        if resume and not self.is_empty() and not self.config.is_file():
            raise UsageError(f"cannot resume {self.path}: it has no config.yaml. Start a new run instead.")

    def clear(self) -> None:
        """Empty a run directory (check_usable has made sure sftune wrote it); the lock file stays."""
        if self.path.exists():
            for child in self.path.iterdir():
                if child.name == LOCK_NAME:
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def lock(self) -> "DirLock":
        """Hold the directory for this process; a second writer gets a UsageError naming this one."""
        return DirLock(self.path / LOCK_NAME).acquire()

    # ------------------------------------------------------------------------------------------ records
    def append_metrics(self, record: dict) -> None:
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(to_json(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _name(e, self.metrics)

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop records written after the checkpoint so no step appears twice."""
        kept = [r for r in read_jsonl(self.metrics) if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics, "".join(to_json(r) + "\n" for r in kept))

    def write_predictions(self, split: str, rows: list[dict]) -> Path:
        path = self.predictions / f"{split}.jsonl"
        atomic_write_text(path, "".join(to_json(r) + "\n" for r in rows))
        return path


# --------------------------------------------------------------------------------------------------- lock
LOCK_NAME = ".sftune.lock"


class DirLock:
    """An flock on RUN_DIR/.sftune.lock holding the writer's pid. The kernel drops it when the process dies
    (kill -9 included), so a stale lock never blocks a resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(f"{self.path.parent} is being written by another sftune process (pid {other}). "
                                 "Wait for it to finish (or stop it), or choose another --output-dir.") from None
            # The holder before us may have removed the file after we opened it: lock the file on disk.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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
