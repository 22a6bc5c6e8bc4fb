"""Option definitions shared by commands, and the error wrapper every command uses."""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

from sftune.errors import UsageError


def user_errors(fn):
    """Turn UsageError into one line on stderr and exit code 2 (also under Typer's test runner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            typer.echo(f"sftune: error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a full disk, a read-only folder, a permission: one line, no traceback
            typer.echo(f"sftune: error: {io_failure(e)}", err=True)
            raise typer.Exit(EXIT_IO) from None

    return wrapper


def examples(*lines: str) -> str:
    """A help epilog of example command lines, one per line."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)
EXIT_IO = 1  # a failed read or write (documented in docs/reliability.md)


def io_failure(e: OSError) -> str:
    where = e.filename or "a file (the system did not say which)"
    cause = e.strerror or str(e) or type(e).__name__
    return " ".join(f"file error on {where}: {cause}. Free space or fix the permissions there, then rerun "
                    "(a training run continues with --resume).".split())


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


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format '{fmt}': expected table or json.")
    return fmt


def is_terminal() -> bool:
    return sys.stdout.isatty()
