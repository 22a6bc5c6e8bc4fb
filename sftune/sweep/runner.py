"""Running a sweep: every run is an independent `sftune train` subprocess, J at a time, started from the
resolved configuration the planner validated (`OUTPUT_DIR/.sweep/configs/TASK__METHOD__SLUG__seed-S.yaml`,
given to `sftune train --config`).

What happens to a run depends only on its directory, so a sweep killed at any moment (even with SIGKILL)
continues where it stopped when the same command runs again:

    results.json complete                 skipped ("skip")
    config.yaml and a checkpoint          `--resume` from the checkpoint ("resume")
    other files (no checkpoint yet, or    `--overwrite` ("overwrite"): it starts again from step 0, as a
      killed before config.yaml)            resume would, without stale metrics.jsonl records
    empty or missing                      a new run ("new")

A lock file per run (`OUTPUT_DIR/.sweep/locks/`, `flock`) is held by the sweep and inherited by the child,
so a child orphaned by a killed sweep keeps its run locked: a new sweep waits for it rather than writing
the same directory twice. Each child's output goes to `OUTPUT_DIR/.sweep/logs/TASK__METHOD__SLUG__seed-S.log`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.artifacts import RunDir, atomic_write_text, read_json
from sftune.config import build, dump_yaml, load_yaml, refuse_unrepeated_remote_code
from sftune.errors import UsageError
from sftune.run import config_differences
from sftune.sweep.plan import Run

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: no cross-process run locks
    fcntl = None

POLL_S = 0.2
GRACE_S = 3.0  # after Ctrl-C, children (same process group) got SIGINT too: give them this long first
STOP_S = 60.0  # then SIGINT them ourselves and wait this long for their checkpoints before SIGKILL


@dataclass
class Outcome:
    run: Run
    status: str = "queued"  # queued, waiting (locked elsewhere), running, complete, cached, failed, interrupted
    action: str = ""  # new, resume, overwrite, skip
    cause: str = ""
    results: dict | None = None
    started: float | None = None
    seconds: float | None = None
    proc: Any = field(default=None, repr=False)
    lock: Any = field(default=None, repr=False)
    log: Path | None = None

    @property
    def done(self) -> bool:
        return self.status in ("complete", "cached")


def state_of(run_dir: RunDir) -> str:
    if run_dir.final_status() in ("complete", "diverged"):  # over: a diverged run would diverge again
        return "skip"
    if run_dir.config.is_file() and (run_dir.checkpoint / "trainer_state.json").is_file():
        return "resume"
    if not run_dir.is_empty():
        return "overwrite"
    return "new"


def check_existing(runs: list[Run], out: Path) -> None:
    """Refuse (exit 2, before anything runs) a run directory that holds a run made with other options."""
    for run in runs:
        run_dir = RunDir(out / run.rel)
        if run_dir.path.exists() and not run_dir.path.is_dir():
            raise UsageError(f"{run_dir.path} is a file, not a run directory. Move it or choose another --output-dir.")
        if not run_dir.config.is_file():
            continue
        try:
            raw = load_yaml(run_dir.config, what="run config")
            stored = build(raw).to_dict()
            diff = config_differences(stored, run.config)
        except UsageError:
            raw, diff = {}, ["config.yaml (unreadable)"]
        # A run trained with --trust-remote-code is continued only when the flag is typed again, as train --resume.
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        refuse_unrepeated_remote_code(model.get("trust_remote_code"), run.config["model"]["trust_remote_code"],
                                      str(run_dir.path), "continue the sweep")
        if diff:
            raise UsageError(f"{run_dir.path} holds a run made with other options ({', '.join(diff[:4])}). "
                             "Use another --output-dir, or delete that run directory to redo it.")


class RunLock:
    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> bool:
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def visible_gpus() -> list[str]:
    """CUDA device ids a child may be given (respecting an existing CUDA_VISIBLE_DEVICES)."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup means CPU runs
        count = 0
    if not count:
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in given.split(",") if x.strip()] if given else [str(i) for i in range(count)]
    return ids[:count]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def child_env(slot: int, jobs: int, gpus: list[str]) -> dict[str, str]:
    """GPUs: slot k gets GPU k (round robin when J exceeds them). CPU with J > 1: J processes split the cores
    (OMP_NUM_THREADS = cores // J), unless OMP_NUM_THREADS is already set."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, cpu_cores() // jobs))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def diverged_cause(results: dict | None) -> str:
    d = (results or {}).get("diverged") or {}
    return f"diverged at step {d.get('step')}: {d.get('what')} is {d.get('value')}" if d else ""


def failure_cause(log: Path | None, rc: int) -> str:
    """The child's one-line error, else the last line of its traceback, else how it exited."""
    try:
        raw = log.read_text(encoding="utf-8", errors="replace") if log else ""
    except OSError:
        raw = ""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in raw.splitlines()]
    lines = [line for line in lines if line]
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit code {rc}"
    for line in reversed(lines):
        if line.startswith("sftune: error: "):
            return line[len("sftune: error: "):][:300]
    if "Traceback (most recent call last):" in lines:
        return f"{lines[-1][:300]} ({how})"
    return how


class Runner:
    def __init__(self, runs: list[Run], out: Path, jobs: int = 1,
                 on_event: Callable[[str, Outcome | None], None] | None = None):
        self.out, self.jobs = Path(out), jobs
        self.outcomes = [Outcome(r) for r in runs]
        self.on_event = on_event or (lambda kind, outcome: None)
        self.gpus = visible_gpus()
        self.active: dict[int, Outcome] = {}

    def _dir(self, o: Outcome) -> RunDir:
        return RunDir(self.out / o.run.rel)

    def _flat(self, o: Outcome) -> str:
        return "__".join(o.run.rel.parts)

    def run(self) -> list[Outcome]:
        """Run everything not complete yet; KeyboardInterrupt stops the children (checkpoints) and re-raises."""
        pending = deque(self.outcomes)
        free = list(range(self.jobs))
        try:
            while pending or self.active:
                for _ in range(len(pending)):
                    if not free:
                        break
                    o = pending.popleft()
                    if not self._claim(o):
                        pending.append(o)  # an earlier sweep's orphan, or another sweep, still runs it
                        continue
                    action = state_of(self._dir(o))
                    if action == "skip":
                        o.lock.release()
                        o.action, o.results = "skip", read_json(self._dir(o).results)
                        o.status = "diverged" if (o.results or {}).get("status") == "diverged" else "cached"
                        o.cause = diverged_cause(o.results)
                        self.on_event("skip", o)
                        continue
                    self._start(o, action, free.pop(0))
                for slot, o in list(self.active.items()):
                    rc = o.proc.poll()
                    if rc is not None:
                        del self.active[slot]
                        free.append(slot)
                        free.sort()
                        self._finish(o, rc)
                self.on_event("tick", None)
                if pending or self.active:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop()
            raise
        return self.outcomes

    def _claim(self, o: Outcome) -> bool:
        o.lock = RunLock(self.out / ".sweep" / "locks" / f"{self._flat(o)}.lock")
        if o.lock.acquire():
            return True
        if o.status != "waiting":
            o.status = "waiting"
            self.on_event("waiting", o)
        return False

    def _config_file(self, o: Outcome) -> Path:
        return self.out / ".sweep" / "configs" / f"{self._flat(o)}.yaml"

    def command(self, o: Outcome, action: str) -> list[str]:
        flag = {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(action, [])
        # train runs a config that turns remote code on only with the flag typed (config.py's refusal): the sweep
        # was given the flag, so its children are given it too.
        remote = ["--trust-remote-code"] if o.run.config["model"]["trust_remote_code"] else []
        return [sys.executable, "-m", "sftune", "train", "--config", str(self._config_file(o)), "--output-dir",
                str(self._dir(o).path), "--format", "json", *flag, *remote]

    def _start(self, o: Outcome, action: str, slot: int) -> None:
        # The child trains from the configuration the planner built and validated, not from re-parsed options.
        atomic_write_text(self._config_file(o), dump_yaml(o.run.config))
        cmd = self.command(o, action)
        o.log = self.out / ".sweep" / "logs" / f"{self._flat(o)}.log"
        o.log.parent.mkdir(parents=True, exist_ok=True)
        with open(o.log, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # Same process group as the sweep: Ctrl-C (and a kill of the group) reaches the children too.
            pass_fds = (o.lock.fd,) if o.lock.fd is not None else ()
            o.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=child_env(slot, self.jobs, self.gpus), pass_fds=pass_fds)
        o.action, o.status, o.started, o.cause = action, "running", time.time(), ""
        self.active[slot] = o
        self.on_event("start", o)

    def _finish(self, o: Outcome, rc: int, stopping: bool = False) -> None:
        o.lock.release()
        o.seconds = time.time() - (o.started or time.time())
        run_dir = self._dir(o)
        if run_dir.is_complete():
            o.status, o.results = "complete", read_json(run_dir.results)
        elif run_dir.final_status() == "diverged":
            o.status, o.results = "diverged", read_json(run_dir.results)
            o.cause = diverged_cause(o.results)
        elif stopping or rc in (130, -signal.SIGINT):
            o.status = "interrupted"
        else:
            o.status = "failed"
            o.cause = failure_cause(o.log, rc) if rc else "exited without a complete results.json"
        self.on_event("interrupted" if o.status == "interrupted" else "done", o)

    def stop(self) -> None:
        """Stop running children: they got the terminal's SIGINT (same process group) or get ours; each
        writes its checkpoint and exits. Whatever still runs after STOP_S is killed."""
        try:
            deadline = time.time() + GRACE_S
            while time.time() < deadline and self._reap(stopping=True):
                time.sleep(POLL_S)
            for o in self.active.values():
                _signal(o.proc, signal.SIGINT)
            deadline = time.time() + STOP_S
            while time.time() < deadline and self._reap(stopping=True):
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: kill now
        for o in self.active.values():
            _signal(o.proc, signal.SIGKILL)
        for o in self.active.values():
            o.proc.wait()
        self._reap(stopping=True)

    def _reap(self, stopping: bool) -> bool:
        for slot, o in list(self.active.items()):
            rc = o.proc.poll()
            if rc is not None:
                del self.active[slot]
                self._finish(o, rc, stopping=stopping)
        return bool(self.active)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
