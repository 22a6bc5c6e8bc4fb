"""`sftune eval RUN_DIR_or_MODEL TASK`: metrics and per-example predictions of a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftune.artifacts import RunDir, atomic_write_json
from sftune.cli import app
from sftune.cli.common import DataDir, Format, SetItems, TrainFile, ValidationFile, check_format, user_errors
from sftune.cli.render import print_results
from sftune.config import build, load_yaml, parse_set, set_dotted
from sftune.diff import apply_diff
from sftune.engine.loop import Trainer
from sftune.errors import UsageError
from sftune.tasks import get_task


@app.command("eval", help="Evaluate a run directory (its model/) or any model on TASK's dev split(s).")
@user_errors
def evaluate(
    target: Annotated[str, typer.Argument(help="A run directory written by 'sftune train', or a model "
                                          "(Hub id, local path, 'minilm').")],
    task: Annotated[str, typer.Argument(help="GLUE task name.")],
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValidationFile = None,
    set_: SetItems = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where predictions and "
                          "metrics go (default: RUN_DIR/eval-TASK, or runs/eval-MODEL-TASK).")] = None,
    from_diff: Annotated[bool, typer.Option("--from-diff", help="Rebuild the model as the run's base model plus "
                         "its diff.safetensors (the sparse artifact) instead of loading model/.")] = False,
    format_: Format = "table",
) -> None:
    check_format(format_)
    task_name = get_task(task).name
    run = RunDir(target)
    tree: dict = {"task": task_name, "method": {"name": "full"}}
    diff_path = run.path / "diff.safetensors"
    if from_diff and not (run.config.is_file() and diff_path.is_file()):
        raise UsageError(f"--from-diff: {target} has no diff.safetensors (only runs that changed under half of "
                         "the weights write one). Evaluate the run directory without --from-diff.")
    # A LoRA run without model/ (no method.merge): its base model plus adapter/, merged after loading.
    adapter = run.path / "adapter"
    from_adapter = run.config.is_file() and not run.model.is_dir() and not from_diff and adapter.is_dir()
    if run.config.is_file() and (run.model.is_dir() or from_diff or from_adapter):
        stored = load_yaml(run.config, what="run config")
        base = dict(stored.get("model") or {})
        on_base = from_diff or from_adapter
        tree["model"] = {**base, "dropout": None} if on_base else {"name": str(run.model), "dropout": None}
        tree["data"] = dict(stored.get("data") or {})
        if stored.get("task") != task_name:  # another task's files would not fit
            tree["data"].update(train_file=None, validation_file=None, text_columns=None)
        default_out = run.path / f"eval-{task_name}"
    else:
        tree["model"] = {"name": target}
        default_out = Path("runs") / f"eval-{Path(target.rstrip('/')).name}-{task_name}"
    for key, value in {"data.data_dir": data_dir, "data.train_file": train_file,
                       "data.validation_file": validation_file}.items():
        if value is not None:
            set_dotted(tree, key, value)
    for key, value in parse_set(set_ or []).items():
        set_dotted(tree, key, value)
    if tree.get("data", {}).get("validation_file") and not tree["data"].get("train_file"):
        tree["data"]["train_file"] = tree["data"]["validation_file"]  # eval needs no training data
    cfg = build(tree)
    trainer = Trainer(cfg)
    trainer.build(need_train=False)
    if from_diff:
        apply_diff(trainer.accelerator.unwrap_model(trainer.model), diff_path)
    if from_adapter:
        from sftune.methods.lora import load_adapter

        load_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter)
    metrics, predictions = trainer.evaluate()
    out = RunDir(output_dir or default_out)
    for split, rows in predictions.items():
        out.write_predictions(split, rows)
    doc = {"model": cfg.model.name, "task": task_name, "metrics": metrics, "output_dir": str(out.path),
           "predictions": {s: str(out.predictions / f"{s}.jsonl") for s in predictions}}
    atomic_write_json(out.path / "metrics.json", doc)
    if format_ == "json":
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_results({"metrics": metrics, "run_dir": str(out.path)}, Console())
