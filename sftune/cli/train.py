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
from sftune.cli.common import check_format, examples, user_errors
from sftune.cli.options import (
    Format,
    MaskMode,
    Method,
    PresetName,
    Reg,
    ReportTo,
    Seed,
    SetItems,
    TrustRemoteCode,
    training_options,
    warn_remote_code,
)
from sftune.cli.render import reporter_for, trainable_table
from sftune.config import build, load_yaml, parse_set, refuse_unrepeated_remote_code
from sftune.engine.guard import EXIT_DIVERGED, Diverged
from sftune.engine.loop import Interrupted
from sftune.errors import UsageError
from sftune.run import default_output_dir, train_run
from sftune.run_tree import config_options, training_tree
from sftune.tasks import TASKS, get_task


def _stored_tree(source: Path, where: str, method: str | None, preset: str | None, reg: list[str] | None,
                 set_: list[str] | None, options: dict) -> dict:
    """A resolved config.yaml (a run directory's for --resume, or --config FILE) with any options given again on
    top (a resume then checks that they agree with the stored run)."""
    stored = load_yaml(source, what="run config")
    name = (stored.get("method") or {}).get("name", "full")
    if method is not None and method != name:
        raise UsageError(f"{where}: --method {method} differs from the stored run's method {name}. Leave "
                         "--method out, or start a new --output-dir.")
    refuse_unrepeated_remote_code((stored.get("model") or {}).get("trust_remote_code"),
                                  bool(options.get("model.trust_remote_code")), f"{where}: {source}", "run it")
    model = (stored.get("model") or {}).get("name", "")
    return training_tree(model, str(stored.get("task", "")), name, preset=preset, options=options, regs=reg or [],
                         sets=parse_set(set_ or []), base=stored)


@app.command(help="Fine-tune MODEL on TASK (" + ", ".join(TASKS) + ") and write a run directory.",
             epilog=examples(
    "sftune train minilm rte --data-dir ../shared/data/glue --method bitfit",
    "sftune train roberta-large rte --method dps-mix --preset roberta",
    "sftune train minilm rte --data-dir DIR --method stochastic --max-steps 200 --report-to tensorboard --plots",
    "sftune train minilm rte --data-dir DIR --set train.lr=3e-5 --set train.eval_every=50 -o runs/x",
    "sftune train minilm rte --data-dir DIR -o runs/x --resume    # continue after Ctrl-C",
    "sftune train minilm rte --data-dir DIR --method bitfit --dry-run"))
@user_errors
@training_options
def train(
    model: Annotated[str | None, typer.Argument(help="Hub id, local path, or 'minilm' (offline MiniLM weights). "
                     "Leave MODEL and TASK out with --resume -o DIR to continue from DIR/config.yaml.")] = None,
    task: Annotated[str | None, typer.Argument(help="Task: " + ", ".join(TASKS) + ".")] = None,
    method: Method = None,
    mask_mode: MaskMode = None,
    preset: PresetName = None,
    reg: Reg = None,
    set_: SetItems = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory "
                          "(default: runs/MODEL-TASK-METHOD-seedS).")] = None,
    seed: Seed = None,
    training: dict = None,  # --epochs ... --stratified: options.TRAINING
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
    trust_remote_code: TrustRemoteCode = False,
    config: Annotated[Path | None, typer.Option("--config", hidden=True, help="Start from a resolved config.yaml "
                      "instead of MODEL and TASK (what a sweep's runs do).")] = None,
) -> None:
    check_format(format_)
    options = config_options(
        seed=seed, **training, mask_mode=mask_mode, report_to=report_to, keep_checkpoint=keep_checkpoint or None,
        plots=plots or None, trust_remote_code=trust_remote_code or None)
    if (model is None) != (task is None):
        raise UsageError("give both MODEL and TASK, or neither (sftune train --resume --output-dir DIR continues a "
                         "run from its config.yaml).")
    if config is not None:
        if model is not None:
            raise UsageError(f"--config {config}: the file names the model and task; leave MODEL and TASK out.")
        tree = _stored_tree(config, f"--config {config}", method, preset, reg, set_, options)
    elif model is None:
        if not (resume and output_dir):
            raise UsageError("missing MODEL and TASK. Give both (sftune train MODEL TASK ...), or continue a run "
                             "with sftune train --resume --output-dir DIR.")
        if not RunDir(output_dir).config.is_file():
            raise UsageError(f"--resume: {output_dir} has no config.yaml to resume from. Give MODEL and TASK to "
                             "start a run there.")
        tree = _stored_tree(RunDir(output_dir).config, "--resume", method, preset, reg, set_, options)
    else:
        tree = training_tree(model, get_task(task).name, method or "full", preset=preset, options=options,
                             regs=reg or [], sets=parse_set(set_ or []))
    cfg = build(tree)
    model, task_name, method = cfg.model.name, cfg.task, cfg.method.name
    if cfg.model.trust_remote_code:
        warn_remote_code(model, "manifest.json")
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
