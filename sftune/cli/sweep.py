"""`sftune sweep MODEL TASK --method a,b --grid key=v1,v2 --seeds N`: many `sftune train` runs, summarised."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sftune import __version__
from sftune.artifacts import RunDir, atomic_write_text
from sftune.cli import app
from sftune.cli.common import check_format, examples, user_errors
from sftune.cli.options import (
    Format,
    MaskMode,
    PresetName,
    Reg,
    SetItems,
    TrustRemoteCode,
    training_options,
    warn_remote_code,
)
from sftune.config import dump_yaml
from sftune.plots import require_matplotlib
from sftune.sweep.case_study import case_study as run_case_study
from sftune.sweep.case_study import plot as plot_case_study
from sftune.sweep.plan import expand
from sftune.sweep.runner import Outcome, Runner, check_existing, state_of
from sftune.sweep.spec import grid_presets, make_spec
from sftune.sweep.summary import Record, mean_std, summarize, write_files
from sftune.tasks import get_task


def pm(stats: dict | None) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats else ""


# ------------------------------------------------------------------------------------------------- progress
def _groups(outcomes: list[Outcome]) -> dict[tuple[str, str], list[Outcome]]:
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.run.config_id, []).append(o)
    return groups


def _main_value(o: Outcome, main: str) -> float | None:
    if not o.done or not o.results:
        return None
    split, _, name = main.partition("/")
    return (o.results.get("metrics") or {}).get(split, {}).get(name)


def _status(os_: list[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in os_) for s in ("running", "waiting", "failed", "diverged", "interrupted",
                                                          "queued")}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    return ", ".join(parts) if parts else "done"


def progress_table(outcomes: list[Outcome], main: str, limit: int = 30) -> Table:
    table = Table(title_justify="left")
    for col in ("method", "config", "seeds done", f"{main} (mean ± std)", "status"):
        table.add_column(col, justify="right" if col.startswith(("seeds", main)) else "left")
    groups = list(_groups(outcomes).items())
    active = [g for g in groups if any(o.status in ("running", "waiting", "failed") for o in g[1])]
    shown = {key for key, _ in (active + [g for g in groups if g not in active])[:limit]}
    for (method, slug), os_ in groups:
        if (method, slug) not in shown:
            continue
        values = [v for v in (_main_value(o, main) for o in os_) if v is not None]
        stats = dict(zip(("mean", "std"), mean_std(values))) if values else None
        table.add_row(method, slug, f"{sum(o.done for o in os_)}/{len(os_)}", pm(stats), _status(os_))
    if len(groups) > limit:
        table.caption = f"... and {len(groups) - limit} more configs"
    return table


def footer(outcomes: list[Outcome], jobs: int, out: Path) -> Text:
    done = sum(o.done for o in outcomes)
    running = sum(o.status == "running" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    return Text(f"{len(outcomes)} runs: {done} done, {running} running, {failed} failed, "
                f"{len(outcomes) - done - running - failed} to go · jobs {jobs} · {out}")


class PlainProgress:
    """One line per event, for logs and pipes."""

    def __init__(self, outcomes: list[Outcome], main: str):
        self.outcomes, self.main = outcomes, main

    def __call__(self, kind: str, o: Outcome | None) -> None:
        if o is None:
            return
        done = sum(x.done for x in self.outcomes)
        where = f"[{done}/{len(self.outcomes)}]"
        if kind == "start":
            print(f"{where} start {o.run.rel} ({o.action})", flush=True)
        elif kind == "skip":
            print(f"{where} skip  {o.run.rel} (complete)", flush=True)
        elif kind == "waiting":
            print(f"{where} wait  {o.run.rel} (locked: another process is running it)", flush=True)
        elif kind == "interrupted":
            print(f"{where} stop  {o.run.rel} (interrupted)", flush=True)
        elif o.status == "failed":
            print(f"{where} FAIL  {o.run.rel}: {o.cause}", flush=True)
        else:
            value = _main_value(o, self.main)
            shown = f" {self.main}={value:.4f}" if value is not None else ""
            print(f"{where} done  {o.run.rel}{shown} ({o.seconds or 0:.0f} s)", flush=True)

    def close(self) -> None:
        pass


class LiveProgress:
    """A live Rich table: per config, seeds done, mean ± std of the main metric so far, status."""

    def __init__(self, outcomes: list[Outcome], main: str, jobs: int, out: Path):
        self.outcomes, self.main, self.jobs, self.out = outcomes, main, jobs, out
        self.live = Live(self._render(), refresh_per_second=4, transient=False)
        self.live.start()
        self.last = 0.0

    def _render(self):
        return Group(progress_table(self.outcomes, self.main), footer(self.outcomes, self.jobs, self.out))

    def __call__(self, kind: str, o: Outcome | None) -> None:
        if kind != "tick" or time.time() - self.last > 0.5:
            self.last = time.time()
            self.live.update(self._render())

    def close(self) -> None:
        self.live.update(self._render())
        self.live.stop()


class QuietProgress:
    def __call__(self, kind: str, o: Outcome | None) -> None:
        pass

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------------------- results
def summary_table(doc: dict) -> Table:
    metrics = list(dict.fromkeys(k for c in doc["configs"] for k in c["metrics"]))
    table = Table(title=f"{doc.get('task', '')} · mean ± std over seeds · ★ best config per method "
                        f"({doc['main_metric']})", title_justify="left")
    for col in ("method", "config", "seeds", *metrics, "best"):
        table.add_column(col, justify="left" if col in ("method", "config") else "right")
    for c in doc["configs"]:
        notes = [f"{c[k]} {k}" for k in ("failed", "diverged") if c.get(k)]
        table.add_row(c["method"], c["config"], str(c["n_seeds"]) + (f" ({', '.join(notes)})" if notes else ""),
                      *[pm(c["metrics"].get(m)) for m in metrics], "★" if c["best"] else "",
                      style="bold" if c["best"] else None)
    return table


def case_table(doc: dict) -> Table:
    table = Table(title="Case study: easy (> half the seeds right) and hard (> half wrong) dev examples",
                  title_justify="left")
    for col in ("method", "config", "seeds", "split", "examples", "easy", "hard", "mixed"):
        table.add_column(col, justify="left" if col in ("method", "config", "split") else "right",
                         no_wrap=col != "config")
    for method, entry in doc["methods"].items():
        if not entry["splits"]:
            table.add_row(method, entry["config"], str(entry["seeds"]), "-", "-", "-", "-", "-")
        for split, s in entry["splits"].items():
            table.add_row(method, entry["config"], str(s["runs"]), split, str(s["examples"]),
                          f"{s['easy_share']:.1%}", f"{s['hard_share']:.1%}", f"{s['mixed_share']:.1%}")
    return table


def print_failures(doc: dict, console: Console) -> None:
    for f in doc["failed"]:
        console.print(f"[red]failed[/red] {escape(f['run_dir'])}: {escape(f['cause'])}", highlight=False)
    for f in doc.get("diverged", []):
        console.print(f"[yellow]diverged[/yellow] {escape(f['run_dir'])}: {escape(f['cause'])} (left out of the "
                      "means)", highlight=False)


# ---------------------------------------------------------------------------------------------------- command
def _grid_help() -> str:
    names = ", ".join(grid_presets()) or "none installed"
    return f"Grid preset (repeatable): {names}. The DPS appendix D grids; presets/grids/NAME.yaml."


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@app.command(help="Run every method x grid point x seed as its own 'sftune train' run (J at a time), skip "
                  "finished runs and resume interrupted ones on a rerun, and report mean ± std per config and "
                  "the best config per method. MODEL may be a sweep YAML file instead (then TASK is optional). "
                  "See docs/sweeps.md.",
             epilog=examples(
    "sftune sweep minilm rte --data-dir DIR --method full,dps-mix --grid-preset dps-mix --seeds 5 --jobs 2",
    "sftune sweep minilm rte --data-dir DIR --method full,bitfit --grid train.lr=1e-5,2e-5 --keep-weights diff",
    "sftune sweep my-sweep.yaml --dry-run",
    "sftune plot sweeps/minilm-rte -o sweep.png"))
@user_errors
@training_options
def sweep(
    model: Annotated[str, typer.Argument(help="Model (as for 'sftune train'), or a sweep YAML file.")],
    task: Annotated[str | None, typer.Argument(help="Task (optional with a sweep file: overrides it).")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="Method(s): --method dps-mix,full "
                      "or repeated (default: the grid presets' methods, else full).")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="Grid axis key=v1,v2,... (repeatable; "
                    "the product is swept): --grid train.lr=1e-5,2e-5 --grid method.p=0.1,0.3. method.* keys "
                    "apply to the methods that have the option; reg.NAME.OPTION adds regulariser NAME.")] = None,
    paired: Annotated[list[str] | None, typer.Option("--paired", help="key=v1,v2,... varied together: all "
                      "--paired axes are zipped (equal lengths) into one grid axis.")] = None,
    grid_preset: Annotated[list[str] | None, typer.Option("--grid-preset", "-G", help=_grid_help())] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds 1..N per config (default 3).")] = None,
    seed_list: Annotated[list[str] | None, typer.Option("--seed-list", help="Explicit seeds: --seed-list "
                         "1,2,3 (instead of --seeds).")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Runs at once (default 1): one GPU each "
                    "where there are GPUs, else they split the CPU cores.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Sweep directory "
                          "(default: sweeps/MODEL-TASK).")] = None,
    preset: PresetName = None,
    mask_mode: MaskMode = None,
    reg: Reg = None,
    set_: SetItems = None,
    training: dict = None,  # --epochs ... --stratified: options.TRAINING
    case_study: Annotated[bool, typer.Option("--case-study", help="Also report easy/hard dev examples per "
                          "method over the seeds of its best config (case_study.json).")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Case study bar chart image (implies "
                    "--case-study; needs matplotlib).")] = None,
    keep_weights: Annotated[str | None, typer.Option("--keep-weights", help="Weights each run keeps: model "
                            "(default), diff (only the sparse diff where a run wrote one) or none (metrics and "
                            "predictions only): a sweep of many runs needs far less disk.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and what a rerun would do with each "
                       "(new, resume, overwrite, skip); run nothing.")] = False,
    format_: Format = "table",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    check_format(format_)
    if keep_weights is not None:
        set_ = [*(set_ or []), f"train.keep_weights={keep_weights}"]  # checked with the run config
    spec_file = Path(model) if Path(model).suffix in (".yaml", ".yml") else None
    cli = {"model": None if spec_file else model, "task": task, "method": method, "grid": grid, "paired": paired,
           "grid_preset": grid_preset, "seeds": seeds, "seed_list": seed_list, "jobs": jobs,
           "output_dir": output_dir, "preset": preset, "mask_mode": mask_mode, "reg": reg, "set": set_, **training,
           "case_study": True if case_study else None, "trust_remote_code": trust_remote_code or None}
    spec = make_spec(cli, spec_file)
    if plot is not None:
        require_matplotlib()  # before hours of runs, not after
        spec.case_study = True
    runs = expand(spec)
    out = spec.output_dir
    check_existing(runs, out)
    if spec.trust_remote_code:
        warn_remote_code(spec.model, "each run's manifest.json")
    if dry_run:
        _print_plan(runs, out, format_)
        return

    atomic_write_text(out / "sweep.yaml", dump_yaml(spec.to_yaml_dict()))
    t = get_task(spec.task)
    main = f"{t.eval_splits[0]}/{t.main_metric}"
    runner = Runner(runs, out, spec.jobs)
    if format_ == "json":
        progress = QuietProgress()
    elif sys.stdout.isatty():
        progress = LiveProgress(runner.outcomes, main, spec.jobs, out)
    else:
        n_methods, n_seeds = len(spec.methods), len(spec.seeds)
        print(f"sweep: {len(runs)} runs ({n_methods} method(s), {len(runs) // n_seeds} config(s), {n_seeds} "
              f"seed(s)), jobs {spec.jobs} -> {out}", flush=True)
        progress = PlainProgress(runner.outcomes, main)
    runner.on_event = progress
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()

    # A run skipped because it was complete counts as complete: a rerun gives the same results.csv.
    records = [Record(task=spec.task, method=o.run.method, config=o.run.slug, seed=o.run.seed,
                      run_dir=str(o.run.rel), status="complete" if o.done else o.status,
                      params=dict(o.run.labels), action=o.action,
                      cause=o.cause, results=o.results) for o in runner.outcomes]
    doc = {"model": spec.model, "task": spec.task, "output_dir": str(out), "methods": spec.methods,
           "seeds": spec.seeds, "sftune_version": __version__, **summarize(records, spec.task)}
    write_files(out, doc)
    if spec.case_study and not interrupted:
        doc["case_study"] = run_case_study(doc, out)
        atomic_write_text(out / "case_study.json", json.dumps(doc["case_study"], indent=2) + "\n")
        if plot:
            plot_case_study(doc["case_study"], plot)

    if format_ == "json":
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        console = Console()
        console.print(summary_table(doc))
        if "case_study" in doc:
            console.print(case_table(doc["case_study"]))
        print_failures(doc, console)
        files = "results.csv, summary.csv, summary.json" + (", case_study.json" if "case_study" in doc else "")
        console.print(f"Wrote {files} in {out}", highlight=False)
    if interrupted:
        typer.echo(f"sftune: sweep interrupted; run the same command again to continue ({doc['counts']['done']}/"
                   f"{len(runs)} runs complete).", err=True)
        raise typer.Exit(130)
    if doc["failed"]:
        typer.echo(f"sftune: {len(doc['failed'])} of {len(runs)} runs failed (see above; logs in "
                   f"{out / '.sweep' / 'logs'}). Rerun the same command to retry them.", err=True)
        raise typer.Exit(1)


def _print_plan(runs, out: Path, format_: str) -> None:
    rows = [{"run_dir": str(r.rel), "method": r.method, "config": r.slug, "seed": r.seed,
             "state": state_of(RunDir(out / r.rel)), "args": r.args} for r in runs]
    if format_ == "json":
        typer.echo(json.dumps({"output_dir": str(out), "runs": rows}, indent=2))
        return
    table = Table(title=f"{len(runs)} runs in {out} (dry run, nothing runs)", title_justify="left")
    for col in ("run directory", "state"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["run_dir"], row["state"])
    Console().print(table)

