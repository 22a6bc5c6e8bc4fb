"""One training run, from a resolved config to a complete run directory. The CLI and sweeps call this."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sftune.artifacts import RunDir, atomic_write_json, atomic_write_text, new_manifest, replace_dir
from sftune.config import RunConfig, build, dump_yaml, load_yaml
from sftune.diff import changed_counts, save_diff
from sftune.engine.loop import Interrupted, Reporter, Trainer
from sftune.errors import UsageError
from sftune.models import group_of_params


def default_output_dir(cfg: RunConfig) -> Path:
    model = Path(cfg.model.name.rstrip("/")).name or "model"
    return Path("runs") / f"{model}-{cfg.task}-{cfg.method['name']}-seed{cfg.train.seed}"


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
    """Train (or resume) into `run_dir`; returns the results document. Raises UsageError on bad input and
    Interrupted after Ctrl-C (with a checkpoint written)."""
    if not dry_run:
        run_dir.check_usable(resume, overwrite)
    if resume and run_dir.config.is_file():
        old = stored_config(run_dir)
        diff = config_differences(old.to_dict(), cfg.to_dict())
        if diff:
            raise UsageError(f"--resume: the options differ from the stored run in {', '.join(diff[:6])}. "
                             f"Resume with the same options, or start a new --output-dir.")
        if run_dir.is_complete():
            results = _read_results(run_dir)
            reporter.finish(results)
            return results

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
    if resume and not resumed and main:
        run_dir.truncate_metrics(0)  # nothing to resume from: start over without duplicate step records
    manifest["resumed_from_step"] = trainer.state.step if resumed else None
    reporter.start(trainer.info())
    t0 = time.time()
    try:
        metrics = trainer.train()
    except Interrupted:
        manifest["status"] = "interrupted"
        manifest["timings"]["interrupted"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write()
        reporter.finish({"metrics": trainer.state.last_eval, "run_dir": str(run_dir.path)})
        raise
    except BaseException:
        manifest["status"] = "failed"
        write()
        raise
    manifest["status"] = "complete"
    manifest["timings"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), train_seconds=trainer.state.train_seconds,
                               wall_seconds_this_session=time.time() - t0)
    # The manifest says complete before results.json exists: results.json is what marks a run complete
    # (RunDir.is_complete), so a kill between the two writes leaves an incomplete run, never a stale manifest.
    write()
    results = _finish(trainer, run_dir, metrics) if main else {"status": "complete", "metrics": metrics}
    acc.wait_for_everyone()
    reporter.finish(results)
    return results


def _manifest(run_dir: RunDir, cfg: RunConfig, trainer: Trainer, resume: bool) -> dict:
    if resume and run_dir.manifest.is_file():
        manifest = json.loads(run_dir.manifest.read_text())
        manifest["status"] = "running"
        manifest.setdefault("timings", {})["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return manifest
    manifest = new_manifest(cfg.train.seed, trainer.splits.fingerprints)
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
    export = getattr(trainer.method, "export", None)
    if export is not None:  # LoRA: writes adapter/, gives the merged plain model and whether to save it
        model, write_model = export(run_dir.path, trainer.tokenizer)
        groups = group_of_params(model)
    if write_model:
        tmp = run_dir.path / "model.tmp"
        model.save_pretrained(tmp, safe_serialization=True)
        trainer.tokenizer.save_pretrained(tmp)
        replace_dir(tmp, run_dir.model)
    for split, rows in trainer.final_predictions.items():
        run_dir.write_predictions(split, rows)
    first = next(iter(metrics))
    results = {
        "status": "complete",
        "run_dir": str(run_dir.path),
        "task": trainer.task.name,
        "model": trainer.cfg.model.name,
        "method": trainer.cfg.method["name"],
        "mask_mode": trainer.cfg.method["mask_mode"],
        "seed": trainer.cfg.train.seed,
        "metrics": metrics,
        "main_metric": {"split": first, "name": trainer.task.main_metric,
                        "value": metrics[first][trainer.task.main_metric]},
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
        results.update(getattr(plugin, "summary_stats", lambda: {})())
    atomic_write_json(run_dir.results, results)
    return results


def _read_results(run_dir: RunDir) -> dict:
    return json.loads(run_dir.results.read_text())
