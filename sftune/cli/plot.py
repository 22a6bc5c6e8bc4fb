"""`sftune plot RUN_DIR... [-o FILE]`: training curves of runs, or of a sweep's configs over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sftune.cli import app
from sftune.cli.common import examples, user_errors


@app.command(help="Draw loss, learning rate, the validation metric and the selected/changed shares per step "
                  "of run directories (one line each), or of a sweep directory (one line per config: the mean "
                  "over its seeds with a ± std band), to PNG, SVG or PDF. Needs matplotlib (sftune[plot]).",
             epilog=examples("sftune plot runs/minilm-rte-bitfit-seed42    # writes RUN_DIR/plots.png",
                             "sftune plot runs/a runs/b -o compare.svg",
                             "sftune plot sweeps/minilm-rte -o sweep.png"))
@user_errors
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, or sweep directories (every run "
                                                        "below them, grouped by config).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Image file: .png, .svg or .pdf "
                      "(default: plots.png inside the one directory given, else ./plots.png).")] = None,
) -> None:
    from sftune.plots import plot_runs

    out = output or (run_dirs[0] / "plots.png" if len(run_dirs) == 1 else Path("plots.png"))
    typer.echo(f"Wrote {plot_runs(run_dirs, out)}")
