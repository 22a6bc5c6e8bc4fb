"""One training run, from a resolved config to a complete run directory. The CLI and sweeps call this."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftune.artifacts import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    match_umask,
    new_manifest,
    read_json,
    replace_dir,
    saving,
)
from sftune.config import RunConfig, build, dump_yaml, load_yaml
from sftune.diff import changed_counts, save_diff
from sftune.engine.guard import Diverged
from sftune.engine.loop import Interrupted, Reporter, Trainer
from sftune.errors import UsageError
from sftune.models import group_of_params
from sftune.trackers import with_trackers


def default_output_dir(cfg: RunConfig) -> Path:
    model = Path(cfg.model.name.rstrip("/")).name or "model"
    return Path("runs") / f"{model}-{cfg.task}-{cfg.method.name}-seed{cfg.train.seed}"


def stored_config(run_dir: RunDir) -> RunConfig:
    return build(load_yaml(run_dir.config, what="run config"))


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def train_run(cfg: RunConfig, run_dir: RunDir, reporter: Reporter, resume: bool = False,
              overwrite: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Train (or resume) into `run_dir`; returns the results document. Raises UsageError on bad input,
    Interrupted after Ctrl-C or SIGTERM (with a checkpoint written), Diverged on a non-finite loss, gradient,
    weight or output (status `diverged`), and OSError when a write fails (status `failed` if it can be written)."""
    if dry_run:
        return _train(cfg, run_dir, reporter, resume, overwrite, dry_run)
    run_dir.check_usable(resume, overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch only rank 0 writes (and locks)
        return _train(cfg, run_dir, reporter, resume, overwrite, dry_run)
    created = not run_dir.path.exists()
    lock = run_dir.lock()
    try:
        return _train(cfg, run_dir, reporter, resume, overwrite, dry_run)
    finally:
        lock.release()
        if created and run_dir.is_empty() and run_dir.path.is_dir():
            run_dir.path.rmdir()  # refused input: leave no empty directory behind


def _train(cfg: RunConfig, run_dir: RunDir, reporter: Reporter, resume: bool, overwrite: bool,
           dry_run: bool) -> dict[str, Any]:
    had_run = run_dir.config.is_file()
    if resume and had_run:
        old = stored_config(run_dir)
        diff = config_differences(old.to_dict(), cfg.to_dict())
        if diff:
            raise UsageError(f"--resume: the options differ from the stored run in {', '.join(diff[:6])}. "
                             f"Resume with the same options (or with none: sftune train --resume -o DIR), or "
                             f"start a new --output-dir.")
        if run_dir.is_complete():
            results = read_json(run_dir.results)
            reporter.finish(results)
            return results
        if run_dir.final_status() == "diverged":
            step = ((read_json(run_dir.results) or {}).get("diverged") or {}).get("step")
            raise UsageError(f"--resume: {run_dir.path} diverged at step {step}; resuming would diverge again. "
                             "Start over with --overwrite and a lower learning rate (or train.nonfinite=skip).")
    elif resume and not dry_run:
        notice(f"--resume: nothing to resume in {run_dir.path} (it is empty or does not exist); starting a new run.")

    trainer = Trainer(cfg, run_dir, reporter)
    trainer.build()
    if dry_run:
        return {"status": "dry-run", **trainer.info()}
    acc = trainer.accelerator
    main = acc.is_main_process  # in multi-process runs only rank 0 writes files and renders tables
    if not main:
        reporter = trainer.reporter = Reporter()
    if main:
        if overwrite:
            run_dir.clear()  # only now: every input has been checked and the model and data loaded
        run_dir.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir.config, dump_yaml(cfg.to_dict()))
    manifest = _manifest(run_dir, cfg, trainer, resume)
    manifest["num_processes"] = acc.num_processes
    write = (lambda: atomic_write_json(run_dir.manifest, manifest)) if main else (lambda: None)
    write()
    acc.wait_for_everyone()
    resumed = trainer.resume() if resume else False
    if resume and not resumed and main and had_run:
        notice(f"--resume: {run_dir.path} has no checkpoint yet (the run stopped before its first one); "
               "starting over from step 0.")
        run_dir.truncate_metrics(0)  # start over without duplicate step records
    manifest["resumed_from_step"] = trainer.state.step if resumed else None
    if main and cfg.train.report_to:
        reporter = trainer.reporter = with_trackers(reporter, cfg, run_dir)
    reporter.start(trainer.info())
    t0 = time.time()
    try:
        with sigterm_as_interrupt():
            metrics = trainer.train()
        results = _finish(trainer, run_dir, metrics) if main else {"status": "complete", "metrics": metrics}
        if main and cfg.train.plots:
            from sftune.plots import plot_runs

            plot_runs([run_dir.path], run_dir.path / "plots.png")
    except Interrupted:
        manifest["status"] = "interrupted"
        manifest["timings"]["interrupted"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write()
        reporter.finish({"metrics": trainer.state.last_eval, "run_dir": str(run_dir.path)})
        raise
    except Diverged as e:
        manifest.update(status="diverged", diverged=e.record())
        write()
        if main:  # results.json marks the run as over: a sweep does not retry it, analyze counts it apart
            atomic_write_json(run_dir.results, _diverged_results(trainer, run_dir, e))
        reporter.finish({"status": "diverged", "metrics": {}, "run_dir": str(run_dir.path)})  # no result to show
        raise
    except BaseException as e:
        manifest["status"] = "failed"
        manifest["reason"] = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        try:
            write()
        except OSError:
            pass  # the disk that failed may refuse this too; the CLI still reports the first error
        raise
    manifest["status"] = "complete"
    manifest["timings"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), train_seconds=trainer.state.train_seconds,
                               wall_seconds_this_session=time.time() - t0)
    write()  # after every final artifact (model/, predictions, results.json) is in place
    acc.wait_for_everyone()
    reporter.finish(results)
    return results


def notice(message: str) -> None:
    print(f"sftune: {message}", file=sys.stderr, flush=True)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop, `kill`) takes the Ctrl-C path: checkpoint, status interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _diverged_results(trainer: Trainer, run_dir: RunDir, e: Diverged) -> dict:
    return {"status": "diverged", "diverged": e.record(), "run_dir": str(run_dir.path), "task": trainer.task.name,
            "model": trainer.cfg.model.name, "method": trainer.cfg.method.name,
            "mask_mode": trainer.cfg.method.mask_mode, "seed": trainer.cfg.train.seed, "metrics": {},
            "steps": e.step, "n_train": trainer.n_train}


def _manifest(run_dir: RunDir, cfg: RunConfig, trainer: Trainer, resume: bool) -> dict:
    if resume and run_dir.manifest.is_file():
        manifest = json.loads(run_dir.manifest.read_text())
        manifest["status"] = "running"
        manifest.setdefault("timings", {})["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return manifest
    manifest = new_manifest(cfg.train.seed, trainer.splits.fingerprints)
    manifest["trust_remote_code"] = cfg.model.trust_remote_code  # only ever True from --trust-remote-code
    manifest["data_source"] = trainer.splits.source
    manifest["n_train"] = trainer.n_train
    if cfg.data.train_size:
        manifest["subset"] = {"size": trainer.n_train, "requested": cfg.data.train_size,
                              "stratified": cfg.data.stratified, "seed": cfg.train.seed,
                              "idx_md5": trainer.train_subset_md5}
    return manifest


def _finish(trainer: Trainer, run_dir: RunDir, metrics: dict) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.model)
    info = trainer.info()  # before a method's export changes the model
    groups, write_model = trainer.groups, True
    exported = trainer.method.export(run_dir.path, trainer.tokenizer)
    if exported is not None:  # LoRA: writes adapter/, gives the merged plain model and whether to save it
        model, write_model = exported
        groups = group_of_params(model)
    if write_model:
        tmp = run_dir.path / "model.tmp"
        try:
            with saving(tmp):
                model.save_pretrained(tmp, safe_serialization=True)
                trainer.tokenizer.save_pretrained(tmp)
                match_umask(*tmp.glob("*.safetensors"))
            replace_dir(tmp, run_dir.model)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no half-written model.tmp/
    for split, rows in trainer.final_predictions.items():
        run_dir.write_predictions(split, rows)
    first = next(iter(metrics))
    results = {
        "status": "complete",
        "run_dir": str(run_dir.path),
        "task": trainer.task.name,
        "model": trainer.cfg.model.name,
        "method": trainer.cfg.method.name,
        "mask_mode": trainer.cfg.method.mask_mode,
        "seed": trainer.cfg.train.seed,
        "metrics": metrics,
        "main_metric": {"split": first, "name": trainer.task.main_metric,
                        "value": metrics[first].get(trainer.task.main_metric)},  # None: no generation (0 tokens)
        "steps": trainer.state.step,
        "n_train": trainer.n_train,
        "train_seconds": trainer.state.train_seconds,
        "trainable": info["trainable"],
    }
    # Changed entries vs the pre-trained weights (and the sparse diff artifact when it is smaller).
    reference = trainer.reference_weights()
    counts = changed_counts(model, reference, groups)
    results["sparsity"] = counts
    if counts["share"] < 0.5:
        results["diff"] = {k: v for k, v in save_diff(model, reference, groups, run_dir.path).items()
                           if k != "changed"}
    del reference
    for plugin in trainer.plugins:
        results.update(plugin.summary_stats())
    keep = trainer.cfg.train.keep_weights
    results["weights"] = "diff" if keep == "diff" and "diff" in results else "none" if keep == "none" else "model"
    atomic_write_json(run_dir.results, results)
    _drop_unkept(run_dir, results["weights"], trainer.cfg.train.keep_checkpoint)
    return results


def _drop_unkept(run_dir: RunDir, weights: str, keep_checkpoint: bool) -> None:
    """After results.json marks the run complete: delete checkpoint/ (it only serves resuming) and the weights
    train.keep_weights does not keep (sweeps of many runs: only the sparse diff, or nothing)."""
    drop = [] if keep_checkpoint else [run_dir.checkpoint]
    if weights != "model":
        drop.append(run_dir.model)
    if weights == "none":
        drop += [run_dir.path / "diff.safetensors", run_dir.path / "diff.json"]
    for path in drop:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

