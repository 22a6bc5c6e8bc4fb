"""`sftune transfer MODEL --source mnli --targets rte,qnli,...`: train on one NLI task, evaluate on others with
the label mapping of the out-of-domain protocol. `sftune transfer RUN_DIR --targets ...` reuses a trained run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sftune import transfer as tr
from sftune.artifacts import RunDir, read_json
from sftune.cli import app
from sftune.cli.common import check_format, examples, is_terminal, user_errors
from sftune.cli.options import (
    BatchSize,
    DataDir,
    Epochs,
    Format,
    LearningRate,
    MaskMode,
    MaxSteps,
    Method,
    PresetName,
    Reg,
    Seed,
    SetItems,
    TrainFile,
    TrustRemoteCode,
    ValidationFile,
    warn_remote_code,
)
from sftune.cli.render import fmt, reporter_for
from sftune.config import build, deep_merge, parse_set, refuse_unrepeated_remote_code
from sftune.engine.guard import EXIT_DIVERGED, Diverged
from sftune.engine.loop import Interrupted, Reporter
from sftune.errors import UsageError, unknown
from sftune.run import stored_config, train_run
from sftune.run_tree import config_options, training_tree
from sftune.tasks import TASKS

DEFAULT_TRAIN_SIZE = 8000  # the reference code's stratified MNLI/SNLI subsample


def _counts(d: dict) -> str:
    return " · ".join(f"{k} {v:,}" for k, v in d.items())


def transfer_table(doc: dict, names: list[str]) -> Table:
    table = Table(title=f"Transfer: {doc['source']} -> {', '.join(names)} · {doc['run_dir']}", title_justify="left")
    for col in ("target", "split", "examples", "accuracy", "gold", "predicted (mapped)", "predicted (source)"):
        table.add_column(col, justify="right" if col in ("examples", "accuracy") else "left")
    for split, values in (doc.get("in_domain") or {}).items():
        if "accuracy" in values:
            table.add_row(f"{doc['source']} (in-domain)", split, "", fmt(values["accuracy"]), "", "", "",
                          style="dim")
    for name in names:
        e = doc["targets"][name]
        table.add_row(name, e["split"], f"{e['examples']:,}", fmt(e["accuracy"]), _counts(e["counts"]["gold"]),
                      _counts(e["counts"]["predicted"]), _counts(e["counts"]["predicted_source"]))
    return table


@app.command(help="Train on an NLI task (mnli, snli, sick) and evaluate on other NLI sets with the label mapping "
                  "(neutral and contradiction -> the non-entailment class of 2-way targets), or evaluate a "
                  "trained RUN_DIR. Writes transfer.json and transfer/<target>.jsonl into the run directory.",
             epilog=examples(
    "sftune transfer minilm --source mnli --data-dir DIR --targets rte,qnli",
    "sftune transfer runs/minilm-mnli --targets rte"))
@user_errors
def transfer(
    model: Annotated[str, typer.Argument(help="A model to train (Hub id, local path, 'minilm'), or a run "
                                         "directory written by 'sftune train'/'sftune transfer' to reuse.")],
    targets: Annotated[list[str] | None, typer.Option("--targets", "-t", help="Comma-separated targets: "
                       + ", ".join(tr.TARGETS) + " (repeatable).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Training task: mnli (default), snli "
                      "or sick (any classification task of 'sftune train' works).")] = None,
    target_file: Annotated[list[str] | None, typer.Option("--target-file", help="Evaluate a CSV/TSV/JSONL "
                           "file as target NAME: --target-file NAME=PATH (repeatable; a built-in NAME uses the "
                           "file instead of the Hub).")] = None,
    target_set: Annotated[list[str] | None, typer.Option("--target-set", help="Per-target option NAME.KEY=VALUE, "
                          "KEY one of " + ", ".join(tr.TARGET_KEYS) + " (e.g. mine.text_columns=premise,"
                          "hypothesis, mine.labels=entailment,not_entailment, scitail.split=validation).")] = None,
    label_map: Annotated[list[str] | None, typer.Option("--label-map", help="Explicit mapping [TARGET:]SRC=DST,... "
                         "(repeatable), e.g. --label-map scitail:contradiction=neutral. Unlisted labels follow "
                         "the name rules.")] = None,
    method: Method = None,
    mask_mode: MaskMode = None,
    preset: PresetName = None,
    reg: Reg = None,
    set_: SetItems = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory (default: "
                          "runs/MODEL-SOURCE-METHOD-seedS-transfer); with a RUN_DIR, where transfer outputs go "
                          "(default: RUN_DIR).")] = None,
    seed: Seed = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    lr: LearningRate = None,
    batch_size: BatchSize = None,
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValidationFile = None,
    train_size: Annotated[int | None, typer.Option("--train-size", help=f"Training examples drawn from the "
                          f"seed (default {DEFAULT_TRAIN_SIZE}; 0 = all).")] = None,
    stratified: Annotated[bool | None, typer.Option("--stratified/--no-stratified", help="Keep label "
                          "proportions in the --train-size draw (default: on).")] = None,
    format_: Format = "table",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --output-dir; a "
                      "complete run is not trained again, targets already evaluated the same way are kept.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --output-dir.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    check_format(format_)
    specs = tr.parse_targets(targets, target_file, target_set)
    names = [s.name for s in specs]
    maps = tr.parse_label_maps(label_map)
    tr.check_map_scopes(maps, names)
    given = RunDir(model)
    reuse = given.config.is_file()
    if reuse:
        if not given.model.is_dir() and not (given.path / "adapter").is_dir():  # LoRA runs: adapter/
            raise UsageError(f"run directory {model} has no model/ (an unfinished run?). Finish it with "
                             "'sftune train ... --resume' or 'sftune transfer ... --resume'.")
        training = {"--source": source, "--method": method, "--mask-mode": mask_mode, "--preset": preset,
                    "--reg": reg, "--set": set_, "--seed": seed, "--epochs": epochs, "--max-steps": max_steps,
                    "--lr": lr, "--batch-size": batch_size, "--train-file": train_file,
                    "--validation-file": validation_file, "--train-size": train_size,
                    "--stratified/--no-stratified": stratified, "--resume": resume or None,
                    "--overwrite": overwrite or None}
        extra = [flag for flag, value in training.items() if value is not None]
        if extra:
            raise UsageError(f"{model} is a trained run directory: {', '.join(extra)} only apply when training. "
                             "Drop them, or give a model to train a new run.")
        cfg = stored_config(given)
        refuse_unrepeated_remote_code(cfg.model.trust_remote_code, trust_remote_code, model, "evaluate it")
        run = given
        previous = read_json(given.path / "transfer.json") or {}
        source_name = previous.get("source") or cfg.task
        data_dir = data_dir or cfg.data.data_dir or os.environ.get("SFTUNE_DATA_DIR")
        out_dir = Path(output_dir) if output_dir else given.path
    else:
        source_name = (source or "mnli").lower()
        task_name = tr.SOURCES.get(source_name, source_name)
        classifiers = {n for n, t in TASKS.items() if not t.is_regression and not t.is_causal_lm}
        if task_name not in classifiers:
            raise unknown("source", source_name, sorted({*tr.SOURCES, *classifiers}),
                          "The protocol trains on mnli, snli or sick.")
        if train_size is not None and train_size < 0:
            raise UsageError(f"--train-size {train_size}: give a positive count, or 0 for the whole training set.")
        options = config_options(
            seed=seed, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, data_dir=data_dir,
            train_file=train_file, validation_file=validation_file, mask_mode=mask_mode,
            train_size="none" if train_size == 0 else train_size, stratified=stratified,
            trust_remote_code=trust_remote_code or None)
        base = {"data": {"train_size": DEFAULT_TRAIN_SIZE, "stratified": True}}
        tree = training_tree(model, task_name, method or "full", preset=preset, options=options, regs=reg or [],
                             sets=parse_set(set_ or []), base=base)
        cfg = build(tree)
        data_dir = cfg.data.data_dir or os.environ.get("SFTUNE_DATA_DIR")
        stem = Path(cfg.model.name.rstrip("/")).name or "model"
        name = f"{stem}-{source_name}-{cfg.method.name}-seed{cfg.train.seed}-transfer"
        run = RunDir(output_dir or Path("runs") / name)
        out_dir = run.path
    if cfg.model.trust_remote_code:
        warn_remote_code(cfg.model.name, "the run's manifest.json")
    source_labels = tr.source_labels_of(cfg.task)

    # Every label set that is known without data is checked now: an unmappable target fails before training.
    for spec in specs:
        if spec.static_labels:
            tr.resolve_mapping(source_labels, spec.static_labels, spec.name, tr.explicit_map(maps, spec.name))
    loaded = [tr.load_target(spec, data_dir) for spec in specs]
    mappings = {t.name: tr.resolve_mapping(source_labels, t.labels, t.name, tr.explicit_map(maps, t.name))
                for t in loaded}

    results = None
    if not reuse:
        if source_name == "snli" and not (cfg.data.train_file or cfg.data.validation_file):
            train_path, validation_path = tr.snli_source_files()
            cfg = build(deep_merge(tree, {"data": {"train_file": str(train_path),
                                                   "validation_file": str(validation_path)}}))
        reporter = Reporter() if format_ == "json" else reporter_for(format_)
        try:
            results = train_run(cfg, run, reporter, resume=resume, overwrite=overwrite)
        except Interrupted as e:
            typer.echo(f"sftune: {e}; continue with: sftune transfer ... --resume --output-dir {run.path}", err=True)
            raise typer.Exit(130) from None
        except Diverged as e:
            typer.echo(f"sftune: error: {e}", err=True)
            raise typer.Exit(EXIT_DIVERGED) from None

    console = Console() if is_terminal() else Console(width=200)
    progress = None
    if format_ != "json":
        def progress(name: str, entry: dict, cached: bool) -> None:
            mapped = ", ".join(f"{s}->{t}" for s, t in entry["label_map"].items())
            console.print(f"[transfer] {name}: {entry['examples']:,} examples, accuracy {entry['accuracy']:.4f}, "
                          f"labels mapped {mapped}" + (" (already evaluated)" if cached else ""),
                          highlight=False, markup=False)
    doc = tr.evaluate_run(run, source_name, loaded, mappings, out_dir, on_target=progress, reuse=resume)
    if format_ == "json":
        shown = {**doc, "targets": {n: doc["targets"][n] for n in names},
                 "metrics": tr.flat_metrics({n: doc["targets"][n] for n in names}),
                 "transfer_json": str(out_dir / "transfer.json")}
        if results is not None:
            shown["training"] = {k: results.get(k) for k in ("metrics", "steps", "n_train", "train_seconds")}
        typer.echo(json.dumps(shown, indent=2, default=str))
    else:
        console.print(transfer_table(doc, names))
        console.print(f"written: {out_dir / 'transfer.json'}, {out_dir / 'transfer'}/<target>.jsonl", highlight=False)
