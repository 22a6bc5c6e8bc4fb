"""How progress and results look: a live Rich table in a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import json
import sys

from rich.console import Console, Group
from rich.live import Live
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


def headline(info: dict) -> Text:
    all_ = info["trainable"]["all"]
    share = all_["trainable"] / max(all_["total"], 1)
    return Text(f"{info['model']} · {info['task']} · {info['method']} ({info['mask_mode']} mode) · "
                f"{info['n_train']:,} train examples · {info['total_steps']} steps · "
                f"trainable {all_['trainable']:,} ({share:.3%})", style="bold")


class RichReporter(Reporter):
    """A live table: step, epoch, loss, lr, latest eval metric, examples/s, and sparsity when measured."""

    def __init__(self, console: Console | None = None, rows: int = 12):
        self.console = console or Console()
        self.rows, self.records, self.last_eval = rows, [], {}

    def start(self, info: dict) -> None:
        self.info = info
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self):
        table = Table(title_justify="left", expand=False)
        metric = f"{self.info['eval_splits'][0]}/{self.info['main_metric']}"
        cols = ["step", "epoch", "loss", "lr", metric, "ex/s"]
        extra = [k for k in SHARE_KEYS if any(k in r for r in self.records)]
        for c in cols + [f"{k} %" for k in extra]:
            table.add_column(c, justify="right")
        for r in self.records[-self.rows:]:
            ev = r.get("eval", {})
            table.add_row(str(r["step"]), f"{r['epoch']:.2f}", f"{r['loss']:.4f}", f"{r['lr']:.2e}",
                          fmt(ev[metric]) if metric in ev else "", f"{r['examples_per_s']:.1f}",
                          *[f"{100 * r[k]:.3f}" if k in r else "" for k in extra])
        return Group(headline(self.info), table)

    def log(self, record: dict) -> None:
        if record["type"] == "eval":
            self.last_eval = record
            if self.records:
                self.records[-1]["eval"] = record
        else:
            self.records.append({**record, "eval": self.last_eval})
        self.live.update(self._render())

    def finish(self, results: dict) -> None:
        self.live.stop()
        print_results(results, self.console)


class PlainReporter(Reporter):
    """One line per record, for logs and pipes."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def start(self, info: dict) -> None:
        print(headline(info).plain, file=self.stream, flush=True)

    def log(self, record: dict) -> None:
        # Per-group shares stay in metrics.jsonl; a log line keeps the totals.
        fields = " ".join(f"{k}={fmt(v)}" for k, v in record.items()
                          if k != "type" and (record["type"] == "eval" or "/" not in k))
        print(f"[{record['type']}] {fields}", file=self.stream, flush=True)

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
