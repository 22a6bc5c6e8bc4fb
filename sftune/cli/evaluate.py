"""`sftune eval RUN_DIR_or_MODEL TASK`: metrics and per-example predictions of a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftune.artifacts import RunDir, atomic_write_json
from sftune.cli import app
from sftune.cli.common import check_format, examples, user_errors
from sftune.cli.options import (
    DataDir,
    Format,
    SetItems,
    TrainFile,
    TrustRemoteCode,
    ValidationFile,
    warn_remote_code,
)
from sftune.cli.render import print_results
from sftune.config import (
    build,
    load_yaml,
    parse_set,
    refuse_remote_code_in_sets,
    refuse_unrepeated_remote_code,
    set_dotted,
)
from sftune.diff import apply_diff
from sftune.engine.guard import Diverged
from sftune.engine.loop import Trainer
from sftune.errors import UsageError
from sftune.tasks import get_task


def check_same_labels(trained: str, task: str, target: str) -> None:
    """A run's head predicts its own task's labels; on a task with other labels its outputs mean nothing."""
    a, b = get_task(trained), get_task(task)
    def labels(t) -> list[str]:
        if t.is_causal_lm:
            return ["generated text"]
        return ["a regression score"] if t.is_regression else list(t.label_names)

    if labels(a) != labels(b):
        raise UsageError(f"{target} was trained on {a.name} (labels: {', '.join(labels(a))}), but {b.name} has "
                         f"labels {', '.join(labels(b))}. Evaluate it on a task with the same labels, or map the "
                         "labels with sftune transfer.")


def head_of_bare_model(model, target: str, task) -> dict:
    """A model that is not a run directory is scored with whatever head its checkpoint gives the task: say so
    (one warning line) when that head is newly initialised, i.e. random, or was trained for other labels.
    Returns what metrics.json records ({} for causal LMs, which have no classification head)."""
    found = getattr(model, "sftune_head", None)
    if found is None:
        return {}
    if found["head"] == "new":
        typer.echo(f"sftune: warning: {target} has no classification head for {task.name} ({task.num_labels} "
                   "outputs): eval gave it a newly initialised, random head, so these metrics are those of a "
                   "random head. Fine-tune it first (sftune train) and evaluate the run directory.", err=True)
        return {"head": "new"}
    theirs, ours = found.get("labels"), list(task.label_names or [])
    if theirs and ours and [n.lower() for n in theirs] != [n.lower() for n in ours]:
        typer.echo(f"sftune: warning: {target}'s head was trained for labels {', '.join(theirs)}, but "
                   f"{task.name}'s labels are {', '.join(ours)}: its outputs are read by position, so these "
                   "metrics may mean nothing. Fine-tune it on the task first (sftune train).", err=True)
        return {"head": "checkpoint", "head_labels": theirs}
    return {"head": "checkpoint"}


@app.command("eval", help="Evaluate a run directory (its model/) or any model on TASK's dev split(s).",
             epilog=examples(
    "sftune eval runs/x rte",
    "sftune eval runs/x rte --from-diff    # base model + the sparse diff",
    "sftune eval minilm rte --data-dir DIR --format json    # a bare model: warns that its head is new"))
@user_errors
def evaluate(
    target: Annotated[str, typer.Argument(help="A run directory written by 'sftune train', or a model "
                                          "(Hub id, local path, 'minilm').")],
    task: Annotated[str, typer.Argument(help="Task to evaluate on (the names sftune train --help lists).")],
    data_dir: DataDir = None,
    train_file: TrainFile = None,
    validation_file: ValidationFile = None,
    set_: SetItems = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where predictions and "
                          "metrics go (default: RUN_DIR/eval-TASK, RUN_DIR/eval-TASK-from-diff, or "
                          "runs/eval-MODEL-TASK).")] = None,
    from_diff: Annotated[bool, typer.Option("--from-diff", help="Rebuild the model as the run's base model plus "
                         "its diff.safetensors (the sparse artifact) instead of loading model/.")] = False,
    format_: Format = "table",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    check_format(format_)
    task_name = get_task(task).name
    sets = parse_set(set_ or [])
    refuse_remote_code_in_sets(sets, "--set")
    run = RunDir(target)
    tree: dict = {"task": task_name, "method": {"name": "full"}}
    diff_path = run.path / "diff.safetensors"
    if run.config.is_file() and not run.is_complete():
        status = run.final_status() or run.status() or "unknown"
        todo = ("retrain with a lower learning rate" if status == "diverged" else
                f"finish it with sftune train --resume --output-dir {target}")
        raise UsageError(f"{target} is not a complete run (status: {status}): it has no final model to evaluate. "
                         f"To evaluate it, {todo}.")
    adapter = run.path / "adapter"
    if run.config.is_file() and not run.model.is_dir() and not adapter.is_dir():
        if not diff_path.is_file():
            raise UsageError(f"{target} kept no weights (train.keep_weights=none): it cannot be evaluated again. "
                             "Retrain it with --set train.keep_weights=model.")
        from_diff = True  # a run that kept only its sparse diff (train.keep_weights=diff)
    if from_diff and not (run.config.is_file() and diff_path.is_file()):
        raise UsageError(f"--from-diff: {target} has no diff.safetensors (only runs that changed under half of "
                         "the weights write one). Evaluate the run directory without --from-diff.")
    # A LoRA run without model/ (no method.merge): its base model plus adapter/, merged after loading.
    from_adapter = run.config.is_file() and not run.model.is_dir() and not from_diff and adapter.is_dir()
    is_run = run.config.is_file() and (run.model.is_dir() or from_diff or from_adapter)
    if is_run:
        stored = load_yaml(run.config, what="run config")
        check_same_labels(str(stored.get("task", "")), task_name, target)
        base = dict(stored.get("model") or {})
        refuse_unrepeated_remote_code(base.get("trust_remote_code"), trust_remote_code, target, "evaluate it")
        on_base = from_diff or from_adapter
        tree["model"] = {**base, "dropout": None} if on_base else {"name": str(run.model), "dropout": None}
        tree["data"] = dict(stored.get("data") or {})
        if stored.get("task") != task_name:  # another task's files would not fit
            tree["data"].update(train_file=None, validation_file=None, text_columns=None)
        # The diff's rebuild gets a folder of its own: comparing it with the plain eval is the point of it.
        default_out = run.path / (f"eval-{task_name}-from-diff" if from_diff else f"eval-{task_name}")
        source = ({"weights": str(diff_path), "base_model": base.get("name"), "from_diff": True} if from_diff
                  else {"weights": str(run.model), "from_diff": False})
    else:
        tree["model"] = {"name": target}
        default_out = Path("runs") / f"eval-{Path(target.rstrip('/')).name}-{task_name}"
        source = {"weights": target, "from_diff": False}
    for key, value in {"data.data_dir": data_dir, "data.train_file": train_file,
                       "data.validation_file": validation_file}.items():
        if value is not None:
            set_dotted(tree, key, value)
    tree["model"]["trust_remote_code"] = trust_remote_code
    for key, value in sets.items():
        set_dotted(tree, key, value)
    if tree.get("data", {}).get("validation_file") and not tree["data"].get("train_file"):
        tree["data"]["train_file"] = tree["data"]["validation_file"]  # eval needs no training data
    cfg = build(tree)
    if trust_remote_code:
        warn_remote_code(cfg.model.name, "metrics.json")
    trainer = Trainer(cfg)
    trainer.build(need_train=False)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_run:
        head = head_of_bare_model(model, target, get_task(task_name))
    else:  # the run's own head (model/, or the diff's or adapter's on the base model)
        head = {} if get_task(task_name).is_causal_lm else {"head": "run"}
    if from_diff:
        apply_diff(model, diff_path)
    if from_adapter:
        from sftune.methods.lora import load_adapter

        load_adapter(model, adapter)
    try:
        metrics, predictions = trainer.evaluate()
    except Diverged as e:  # e.g. a run written before divergence was detected: no metric from NaN outputs
        raise UsageError(f"{target}: {e.what} is {e.value}; the model's weights are not usable (a diverged "
                         "run?). Retrain it with a lower learning rate.") from None
    out = RunDir(output_dir or default_out)
    for split, rows in predictions.items():
        out.write_predictions(split, rows)
    doc = {"model": cfg.model.name, "task": task_name, "source": source, **head,
           "trust_remote_code": cfg.model.trust_remote_code, "metrics": metrics,
           "output_dir": str(out.path),
           "predictions": {s: str(out.predictions / f"{s}.jsonl") for s in predictions}}
    atomic_write_json(out.path / "metrics.json", doc)
    if format_ == "json":
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_results({"metrics": metrics, "run_dir": str(out.path)}, Console())
