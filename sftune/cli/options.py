"""Command-line options shared by several commands, declared once (Typer's `Annotated` aliases). The config
key each training option sets is in `sftune.run_tree.OPTIONS`."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any

import typer

from sftune.registry import methods


def method_help() -> str:
    """--method's help: the methods registered when the commands are defined."""
    return "Method: " + ", ".join(methods()) + ". See 'sftune methods'. Default: full."


Format = Annotated[str, typer.Option("--format", "-f", help="Output: table (Rich, or plain lines when "
                                     "not a terminal) or json (one JSON document on stdout).")]
DataDir = Annotated[str | None, typer.Option("--data-dir", help="GLUE-format data directory "
                                             "(default: $SFTUNE_DATA_DIR, else the Hugging Face Hub).")]
TrainFile = Annotated[str | None, typer.Option("--train-file", help="CSV/TSV/JSONL training file.")]
ValidationFile = Annotated[str | None, typer.Option("--validation-file", help="CSV/TSV/JSONL validation file.")]
# Training options shared by train, transfer and sweep.
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed (default 42).")]
Epochs = Annotated[float | None, typer.Option("--epochs", help="Training epochs.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (overrides --epochs).")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Batch size per optimizer step.")]
ReportTo = Annotated[str | None, typer.Option("--report-to", help="Also log to experiment trackers, "
                                              "comma-separated: tensorboard, wandb, mlflow, trackio (off by "
                                              "default; files under RUN_DIR/trackers).")]
SetItems = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override any config key: "
                                                    "--set train.lr=1e-5 --set method.p=0.3 (repeatable).")]
Method = Annotated[str | None, typer.Option("--method", "-m", help=method_help())]
MaskMode = Annotated[str | None, typer.Option("--mask-mode", help="grad (reference: masks gradients, AdamW still "
                                              "moves unselected entries) or update (exact: only selected entries "
                                              "change; an int16 step count per entry).")]
PresetName = Annotated[str | None, typer.Option("--preset", "-p", help="Hyperparameter preset name or YAML path "
                                            "('sftune presets ls').")]
Reg = Annotated[list[str] | None, typer.Option("--reg", "-r", help="Add a regulariser, repeatable: --reg "
                                               "mixout:p=0.3 --reg llrd:eta=0.9 (see 'sftune methods').")]
TrainSize = Annotated[int | None, typer.Option("--train-size", help="Train on N examples drawn from the seed "
                                               "(low-resource setting).")]
Stratified = Annotated[bool, typer.Option("--stratified", help="Keep label proportions with --train-size.")]
# Running a model repository's own Python is the user's decision, typed on the command line of train, eval,
# transfer and sweep (a preset, sweep file or --set that turns it on is refused: config.refuse_remote_code).
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run the Python code that ships with "
                                               "the model (only for repositories you trust).")]


def warn_remote_code(model: str, recorded_in: str) -> None:
    """The warning line every command prints when --trust-remote-code is on."""
    typer.echo(f"sftune: warning: --trust-remote-code: running the Python code that ships with {model} "
               f"(it runs with your permissions); recorded in {recorded_in}.", err=True)

# The schedule and data options `train` and `sweep` both take, in help order (`training_options` adds them).
TRAINING: dict[str, Any] = {"epochs": Epochs, "max_steps": MaxSteps, "lr": LearningRate, "batch_size": BatchSize,
                            "data_dir": DataDir, "train_file": TrainFile, "validation_file": ValidationFile,
                            "train_size": TrainSize, "stratified": Stratified}


def training_options(command):
    """Put TRAINING's options where the command has a parameter `training`, and pass them to it as one mapping
    (option name -> value, None when not given: --stratified is True or None). Typer reads the command's
    signature, so the options are declared here once instead of in every command."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("training")
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias,
                               default=False if name == "stratified" else None) for name, alias in TRAINING.items()]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[at + 1:]]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        training = {name: kwargs.pop(name) for name in TRAINING}
        training["stratified"] = training["stratified"] or None
        return command(*args, training=training, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*params[:at], *added, *rest])
    return wrapper
