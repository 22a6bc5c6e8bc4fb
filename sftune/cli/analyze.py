"""`sftune analyze DIR`: mean ± std per config and the easy/hard case study of the complete runs under DIR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftune.cli import app
from sftune.cli.common import check_format, examples, user_errors
from sftune.cli.options import Format
from sftune.cli.sweep import case_table, print_failures, summary_table
from sftune.errors import UsageError
from sftune.sweep.case_study import case_study as run_case_study
from sftune.sweep.case_study import plot as plot_case_study
from sftune.sweep.summary import scan, summarize


@app.command(help="Summarise the complete runs under DIR (a sweep directory, or any tree of run directories): "
                  "mean ± std of every metric per config (the run directory's parent), the best config per "
                  "method, and the easy/hard case study per method over the seeds of its best config. "
                  "Reads only; writes nothing but --plot.",
             epilog=examples(
    "sftune analyze sweeps/minilm-rte",
    "sftune analyze sweeps/minilm-rte --plot case-study.png --format json"))
@user_errors
def analyze(
    directory: Annotated[Path, typer.Argument(help="Sweep directory or any directory holding run directories.")],
    case_study: Annotated[bool, typer.Option("--case-study/--no-case-study", help="Include the easy/hard "
                          "case study.")] = True,
    plot: Annotated[Path | None, typer.Option("--plot", help="Bar chart of the case study (needs matplotlib; "
                    "one task).")] = None,
    format_: Format = "table",
) -> None:
    check_format(format_)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory. Give a sweep's --output-dir.")
    records = scan(directory)
    if not records:
        raise UsageError(f"no complete runs (results.json) under {directory}.")
    tasks: dict[str, dict] = {}
    for task in dict.fromkeys(r.task for r in records):
        doc = {"task": task, **summarize([r for r in records if r.task == task], task or None)}
        if case_study:
            doc["case_study"] = run_case_study(doc, directory)
        tasks[task] = doc
    if plot:
        if len(tasks) != 1 or not case_study:
            raise UsageError("--plot draws the case study of one task: analyze a directory with one task.")
        plot_case_study(next(iter(tasks.values()))["case_study"], plot)
    if format_ == "json":
        typer.echo(json.dumps({"directory": str(directory), "tasks": tasks}, indent=2, default=str))
        return
    console = Console()
    for doc in tasks.values():
        console.print(summary_table(doc))
        print_failures(doc, console)
        if "case_study" in doc:
            console.print(case_table(doc["case_study"]))
