"""How progress and results look: a live Rich display in a terminal, plain lines otherwise, JSON on request.

The screen and the plain lines use the same units: shares of weights as percentages, rates per second, the
remaining time as H:MM:SS.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from sftune.engine.loop import Reporter
from sftune.models import GROUPS

SHARE_KEYS = ("selected", "changed")  # per-step sparsity columns, when a method reports them


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}"
        return f"{value:.2e}"
    return str(value)


def pct(share: float) -> str:
    """A share of weights as a percentage; three decimals, as per-step selections are often below 1%."""
    return f"{100 * share:.3f}%"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def trainable_table(trainable: dict, title: str = "Trainable parameters") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("group", "trainable", "total", "share"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for group in (*GROUPS, "all"):
        row = trainable.get(group)
        if not row or not row["total"]:
            continue
        share = row["trainable"] / row["total"]
        table.add_row(group, f"{row['trainable']:,}", f"{row['total']:,}", f"{share:.2%}",
                      style="bold" if group == "all" else None)
    return table


def headline(info: dict, selected: float | None = None) -> Text:
    """Model, task, method, data and steps, and what training may change. Methods that choose a subset every
    step (Child-Tuning, Stochastic/Top/Random Tuning, DPS) train a few of their candidates per step: the header
    names both counts, the per-step share as of the last logged step."""
    all_ = info["trainable"]["all"]
    share = all_["trainable"] / max(all_["total"], 1)
    if info.get("selects_per_step"):
        per_step = (f"updated per step {pct(selected)}" if selected is not None
                    else f"updated per step: selected % (first logged at step {info.get('log_every', '?')})")
        weights = f"candidates {all_['trainable']:,} ({pct(share)}) · {per_step}"
    else:
        weights = f"trainable {all_['trainable']:,} ({pct(share)})"
    return Text(f"{info['model']} · {info['task']} · {info['method']} ({info['mask_mode']} mode) · "
                f"{info['n_train']:,} train examples · {info['total_steps']} steps · {weights}", style="bold")


def main_metric(info: dict) -> str:
    return f"{info['eval_splits'][0]}/{info['main_metric']}"


class StepRateColumn(ProgressColumn):
    """Steps per second, or seconds per step when a step takes longer than one."""

    def render(self, task) -> Text:
        speed = task.speed
        if not speed:
            return Text("- step/s", style="progress.data.speed")
        text = f"{speed:.2f} step/s" if speed >= 1 else f"{1 / speed:.1f} s/step"
        return Text(text, style="progress.data.speed")


class RichReporter(Reporter):
    """A progress bar (steps, rate, elapsed, ETA, latest loss and lr, or 'evaluating'), the header, and a
    table of the last logged steps (loss, lr, latest eval metric, examples/s, selected/changed %)."""

    def __init__(self, console: Console | None = None, rows: int = 12):
        self.console = console or Console()
        self.rows, self.records, self.last_eval = rows, [], {}
        self.selected: float | None = None

    def start(self, info: dict) -> None:
        self.info = info
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps"), TaskProgressColumn(), StepRateColumn(),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=self.console, speed_estimate_period=600)
        self.task = self.progress.add_task("train", total=info["total_steps"], status="[dim]first step...")
        # Rendered afresh on every refresh, so elapsed time and ETA move during a slow step or an evaluation.
        self.live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4, transient=False)
        self.live.start()

    def step(self, progress: dict) -> None:
        step = progress["step"]
        if step > 1 and not self.progress.tasks[0].completed:
            self.progress.reset(self.task, completed=step - 1)  # resumed: do not count earlier steps in the rate
        status = f"loss {progress['loss']:.4f} · lr {progress['lr']:.2e}"
        if self.last_eval:
            metric = main_metric(self.info)
            if metric in self.last_eval:
                status += f" · {metric} {fmt(self.last_eval[metric])}"
        self.progress.update(self.task, completed=step, status=status)
        self.live.refresh()

    def evaluating(self, step: int) -> None:
        self.progress.update(self.task, status=f"[yellow]evaluating {', '.join(self.info['eval_splits'])} "
                                               f"at step {step}...")
        self.live.refresh()

    def _table(self) -> Table:
        table = Table(title_justify="left", expand=False)
        metric = main_metric(self.info)
        extra = [k for k in SHARE_KEYS if any(k in r for r in self.records)]
        for c in ["step", "epoch", "loss", "lr", metric, "ex/s"] + [f"{k} %" for k in extra]:
            table.add_column(c, justify="right")
        for r in self.records[-self.rows:]:
            ev = r.get("eval", {})
            table.add_row(str(r["step"]), f"{r['epoch']:.2f}", f"{r['loss']:.4f}", f"{r['lr']:.2e}",
                          fmt(ev[metric]) if metric in ev else "", f"{r['examples_per_s']:.1f}",
                          *[pct(r[k])[:-1] if k in r else "" for k in extra])
        return table

    def _render(self):
        parts = [headline(self.info, self.selected)]
        if self.records:
            parts.append(self._table())
        parts.append(self.progress.get_renderable())
        return Group(*parts)

    def log(self, record: dict) -> None:
        if record["type"] == "eval":
            self.last_eval = record
            if self.records:
                self.records[-1]["eval"] = record
            self.progress.update(self.task, status=f"{main_metric(self.info)} "
                                                   f"{fmt(record.get(main_metric(self.info), ''))}")
        else:
            self.records.append({**record, "eval": self.last_eval})
            self.selected = record.get("selected", self.selected)
        self.live.refresh()

    def finish(self, results: dict) -> None:
        if hasattr(self, "live"):
            self.live.stop()
        print_results(results, self.console)


class PlainReporter(Reporter):
    """One line per record, for logs and pipes, in the units of the screen: step N/TOTAL, shares in %,
    ETA. The first step prints a line too, so a log shows numbers before the first logged step."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.info, self.first_step = {}, None

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def start(self, info: dict) -> None:
        self.info, self.t0, self.first_step = info, time.perf_counter(), None
        self._print(headline(info).plain)

    def step(self, progress: dict) -> None:
        if self.first_step is None:
            self.first_step, self.t_first = progress["step"], time.perf_counter()
            if progress["step"] % self.info.get("log_every", 1):
                self._print(f"[step] step={progress['step']}/{self.info['total_steps']} "
                            f"loss={fmt(progress['loss'])} lr={fmt(progress['lr'])} "
                            f"time={time.perf_counter() - self.t0:.1f}s")

    def eta(self, step: int) -> str:
        done = step - self.first_step if self.first_step is not None else 0
        if done <= 0:
            return clock(None)
        per_step = (time.perf_counter() - self.t_first) / done
        return clock(per_step * (self.info["total_steps"] - step))

    def log(self, record: dict) -> None:
        # Per-group shares stay in metrics.jsonl; a log line keeps the totals.
        fields = []
        for key, value in record.items():
            if key == "type" or (record["type"] == "train" and "/" in key):
                continue
            if key == "step" and self.info:
                value = f"{value}/{self.info['total_steps']}"
            elif key in SHARE_KEYS:
                value = pct(value)
            elif key == "examples_per_s":
                key, value = "ex/s", f"{value:.1f}"
            fields.append(f"{key}={fmt(value)}")
        if record["type"] == "train" and self.first_step is not None:
            fields.append(f"eta={self.eta(record['step'])}")
        self._print(f"[{record['type']}] {' '.join(fields)}")

    def finish(self, results: dict) -> None:
        print_results(results, Console(file=self.stream, width=120))


class QuietReporter(Reporter):
    """--format json: nothing until the final document."""

    def finish(self, results: dict) -> None:
        print(json.dumps(results, indent=2, default=str))


def print_results(results: dict, console: Console) -> None:
    table = Table(title=f"Results: {results.get('run_dir', '')}", title_justify="left")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split, values in results["metrics"].items():
        for name, value in values.items():
            table.add_row(split, name, fmt(value))
    console.print(table)


def reporter_for(fmt_: str) -> Reporter:
    if fmt_ == "json":
        return QuietReporter()
    return RichReporter() if sys.stdout.isatty() else PlainReporter()
