"""`sftune train MODEL TASK --method M`: fine-tune and write a run directory."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftune import trackers
from sftune.artifacts import RunDir
from sftune.cli import app
from sftune.cli.common import (
    BatchSize,
    DataDir,
    Epochs,
    Format,
    LearningRate,
    MaxSteps,
    ReportTo,
    Seed,
    SetItems,
    TrainFile,
    ValidationFile,
    check_format,
    examples,
    user_errors,
)
from sftune.cli.render import reporter_for, trainable_table
from sftune.config import build, deep_merge, load_yaml, parse_reg, parse_set, refuse_remote_code, set_dotted
from sftune.engine.guard import EXIT_DIVERGED, Diverged
from sftune.engine.loop import Interrupted
from sftune.errors import UsageError
from sftune.presets import load_preset
from sftune.registry import methods
from sftune.run import default_output_dir, train_run
from sftune.tasks import TASKS, get_task


def _method_help() -> str:
    return "Method: " + ", ".join(methods()) + ". See 'sftune methods'."


def training_tree(model: str, task: str, method: str, preset: str | None, reg: list[str] | None,
                  set_: list[str] | None, options: dict, base: dict | None = None) -> dict:
    """The config tree of a training run: base <- preset (config, tasks[task]) <- options (dotted keys; None
    means not given) <- --reg <- --set. Shared by `train` and `transfer`."""
    tree: dict = deep_merge(base or {}, {"model": {"name": model}, "task": task, "method": {"name": method}})
    if preset:
        found = load_preset(preset)
        found_tree = found.for_task(task, method)
        refuse_remote_code(found_tree, f"preset {found.name}")
        tree = deep_merge(tree, found_tree)
        tree["preset"] = found.name
    for key, value in options.items():
        if value is not None:
            set_dotted(tree, key, value)
    if options.get("train.epochs") is not None and options.get("train.max_steps") is None:
        tree.get("train", {}).pop("max_steps", None)  # an explicit --epochs beats a preset's fixed step count
    if reg:
        tree["regs"] = list(tree.get("regs") or []) + [parse_reg(r) for r in reg]
    sets: dict = {}
    for key, value in parse_set(set_ or []).items():
        set_dotted(sets, key, value)
        set_dotted(tree, key, value)
    refuse_remote_code(sets, "--set")
    return tree


def _stored_tree(output_dir: Path | None, resume: bool, method: str | None, preset, reg, set_, cli: dict) -> dict:
    """`sftune train --resume -o DIR`: the run's own config.yaml, with any options given again on top (the
    resume then checks that they agree with it)."""
    if not (resume and output_dir):
        raise UsageError("missing MODEL and TASK. Give both (sftune train MODEL TASK ...), or continue a run "
                         "with sftune train --resume --output-dir DIR.")
    run_dir = RunDir(output_dir)
    if not run_dir.config.is_file():
        raise UsageError(f"--resume: {output_dir} has no config.yaml to resume from. Give MODEL and TASK to "
                         "start a run there.")
    stored = load_yaml(run_dir.config, what="run config")
    name = (stored.get("method") or {}).get("name", "full")
    if method is not None and method != name:
        raise UsageError(f"--resume: --method {method} differs from the stored run's method {name}. Resume "
                         "without --method, or start a new --output-dir.")
    if (stored.get("model") or {}).get("trust_remote_code") and not cli.get("model.trust_remote_code"):
        raise UsageError(f"--resume: {output_dir} was trained with --trust-remote-code; pass it again to resume.")
    model = (stored.get("model") or {}).get("name", "")
    return training_tree(model, str(stored.get("task", "")), name, preset, reg, set_, cli, base=stored)


@app.command(help="Fine-tune MODEL on TASK (" + ", ".join(TASKS) + ") and write a run directory.",
             epilog=examples(
    "sftune train minilm rte --data-dir ../shared/data/glue --method bitfit",
    "sftune train roberta-large rte --method dps-mix --preset roberta",
    "sftune train minilm rte --data-dir DIR --method stochastic --max-steps 200 --report-to tensorboard --plots",
    "sftune train minilm rte --data-dir DIR --set train.lr=3e-5 --set train.eval_every=50 -o runs/x",
    "sftune train minilm rte --data-dir DIR -o runs/x --resume    # continue after Ctrl-C",
    "sftune train minilm rte --data-dir DIR --method bitfit --dry-run"))
@user_errors
def train(
    model: Annotated[str | None, typer.Argument(help="Hub id, local path, or 'minilm' (offline MiniLM weights). "
                     "Leave MODEL and TASK out with --resume -o DIR to continue from DIR/config.yaml.")] = None,
    task: Annotated[str | None, typer.Argument(help="GLUE task: " + ", ".join(TASKS) + ".")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help=_method_help() + " Default: full.")] = None,
    mask_mode: Annotated[str | None, typer.Option("--mask-mode", help="grad (reference: masks gradients, "
                         "AdamW still moves unselected entries) or update (exact: only selected entries "
                         "change).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Hyperparameter preset name or YAML "
                      "path ('sftune presets ls').")] = None,
    reg: Annotated[list[str] | None, typer.Option("--reg", "-r", help="Add a regulariser, repeatable: "
                   "--reg mixout:p=0.3 --reg llrd:eta=0.9 (see 'sftune methods').")] = None,
    set_: SetItems = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory "
                          "(default: runs/MODEL-TASK-METHOD-seedS).")] = None,
    seed: Seed = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    lr: LearningRate = None,
    batch_size: BatchSize = None,
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValidationFile = None,
    train_size: Annotated[int | None, typer.Option("--train-size", help="Train on N examples drawn from "
                          "the seed (low-resource setting).")] = None,
    stratified: Annotated[bool, typer.Option("--stratified", help="Keep label proportions with --train-size.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build everything, print the trainable-parameter "
                       "table per module group, train nothing, write nothing.")] = False,
    format_: Format = "table",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --output-dir.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output-dir if it is empty or an "
                         "earlier sftune run (anything else is left untouched).")] = False,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep checkpoint/ after the run "
                               "completes (deleted by default: it only serves --resume).")] = False,
    report_to: ReportTo = None,
    plots: Annotated[bool, typer.Option("--plots", help="Write plots.png (loss, lr, validation metric, "
                     "shares) into the run directory at the end (needs matplotlib).")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the Python code that ships "
                                 "with the model (only for repositories you trust).")] = False,
) -> None:
    check_format(format_)
    cli = {"train.seed": seed, "train.epochs": epochs, "train.max_steps": max_steps, "train.lr": lr,
           "train.batch_size": batch_size, "data.data_dir": data_dir, "data.train_file": train_file,
           "data.validation_file": validation_file, "data.train_size": train_size, "method.mask_mode": mask_mode,
           "data.stratified": True if stratified else None, "train.report_to": report_to,
           "train.keep_checkpoint": True if keep_checkpoint else None, "train.plots": True if plots else None,
           "model.trust_remote_code": True if trust_remote_code else None}
    if (model is None) != (task is None):
        raise UsageError("give both MODEL and TASK, or neither (sftune train --resume --output-dir DIR continues a "
                         "run from its config.yaml).")
    if model is None:
        tree = _stored_tree(output_dir, resume, method, preset, reg, set_, cli)
    else:
        tree = training_tree(model, get_task(task).name, method or "full", preset, reg, set_, cli)
    cfg = build(tree)
    model, task_name, method = cfg.model.name, cfg.task, cfg.method.name
    if cfg.model.trust_remote_code:
        typer.echo(f"sftune: warning: --trust-remote-code: running the Python code that ships with {model} "
                   "(it runs with your permissions); recorded in manifest.json.", err=True)
    trackers.parse(cfg.train.report_to)  # unknown or missing trackers fail now, not after loading the model
    if cfg.train.plots and not dry_run:
        from sftune.plots import require_matplotlib

        require_matplotlib()  # before training, not after
    run_dir = RunDir(output_dir or default_output_dir(cfg))
    reporter = reporter_for(format_)
    try:
        results = train_run(cfg, run_dir, reporter, resume=resume, overwrite=overwrite, dry_run=dry_run)
    except Interrupted as e:
        flag = " --trust-remote-code" if cfg.model.trust_remote_code else ""
        typer.echo(f"sftune: {e}; continue with: sftune train --resume --output-dir "
                   f"{shlex.quote(str(run_dir.path))}{flag}", err=True)
        raise typer.Exit(130) from None
    except Diverged as e:
        typer.echo(f"sftune: error: {e}", err=True)
        raise typer.Exit(EXIT_DIVERGED) from None
    if dry_run:
        if format_ == "json":
            typer.echo(json.dumps(results, indent=2))
        else:
            console = Console()
            console.print(f"{model} · {task_name} · {method}: {results['n_train']:,} train examples, "
                          f"{results['total_steps']} steps (dry run, nothing written)")
            console.print(trainable_table(results["trainable"]))
