"""The memory profile as Rich tables (appendix F's layout), JSON or CSV.

Table 1 mirrors appendix F of the DPS paper: rows are batch sizes, columns methods, each cell the peak and
its overhead over vanilla fine-tuning (`full`) at the same batch size. Table 2 splits the step time
(medians over the untracked, timed steps after the first). Table 3 is the breakdown of each peak.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from sftune.profile.common import PART_LABELS, PARTS, TIME_PHASES

OK = ("ok", "estimated")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def _index(cells: list[dict]) -> dict[tuple[str, int], dict]:
    return {(c["method"], c["batch_size"]): c for c in cells}


def annotate(report: dict[str, Any]) -> dict[str, Any]:
    """Add to each successful cell: `other` (peak - parts, derived), the overhead of its peak over `full` at
    the same batch size, and its step time relative to `full`."""
    cells = report["cells"]
    idx = _index(cells)
    for c in cells:
        if c.get("status") not in OK:
            continue
        parts = c.get("parts", {})
        c["other_bytes"] = int(c["peak_bytes"] - sum(parts.values()))
        ref = idx.get(("full", c["batch_size"]))
        if ref is not None and ref.get("status") in OK and ref.get("peak_bytes"):
            c["peak_vs_full_pct"] = 100.0 * (c["peak_bytes"] - ref["peak_bytes"]) / ref["peak_bytes"]
            if c.get("time") and ref.get("time") and ref["time"].get("total"):
                c["time_vs_full_pct"] = 100.0 * (c["time"]["total"] - ref["time"]["total"]) / ref["time"]["total"]
                mine, base = per_step_seconds(c["time"]), per_step_seconds(ref["time"])
                if base:
                    c["step_vs_full_pct"] = 100.0 * (mine - base) / base
    return report


def per_step_seconds(time: dict[str, float]) -> float:
    """A step without the work reported apart: extra forward passes (R3F, R-Drop) and the forward hooks
    (DPS stage starts, which a real run pays once per stage of U steps and a short profile every step)."""
    return time.get("total", 0.0) - time.get("extra_loss", 0.0) - time.get("hooks", 0.0)


# ------------------------------------------------------------------------------------------------ tables
def _failed(cell: dict, notes: list[str]) -> Text:
    notes.append(f"{cell['method']} bs={cell['batch_size']}: {cell.get('status')}: {cell.get('error', '')}")
    tag = "OOM" if cell.get("status") == "oom" else cell.get("status", "error")
    return Text(f"{tag} [{len(notes)}]", style="bold red")


def peak_table(report: dict, notes: list[str]) -> Table:
    methods, sizes = report["methods"], report["batch_sizes"]
    what = "Estimated peak memory" if report["mode"] == "estimated" else "Peak memory"
    table = Table(title=f"{what} (overhead vs full)", title_justify="left")
    table.add_column("batch size", justify="right")
    for m in methods:
        table.add_column(m, justify="right")
    idx = _index(report["cells"])
    for bs in sizes:
        row: list[Any] = [str(bs)]
        for m in methods:
            c = idx.get((m, bs))
            if c is None:
                row.append("-")
            elif c.get("status") not in OK:
                row.append(_failed(c, notes))
            else:
                pct = c.get("peak_vs_full_pct")
                extra = "" if m == "full" or pct is None else f" ({pct:+.1f}%)"
                row.append(human_bytes(c["peak_bytes"]) + extra)
        table.add_row(*row)
    return table


def time_table(report: dict) -> Table:
    table = Table(title="Step time, seconds (median of the timed steps after the first)", title_justify="left")
    for col in ("batch size", "method", *[TIME_PHASES[p] for p in TIME_PHASES], "total", "vs full", STEP_COL):
        table.add_column(col, justify="left" if col == "method" else "right")
    for c in _ok_cells(report):
        t = c.get("time") or {}
        table.add_row(str(c["batch_size"]), c["method"], *[f"{t.get(p, 0.0):.3f}" for p in TIME_PHASES],
                      f"{t.get('total', 0.0):.3f}", _pct(c, "time_vs_full_pct"), _pct(c, "step_vs_full_pct"))
    return table


STEP_COL = "vs full, w/o extra fwd + hooks"


def _pct(cell: dict, key: str) -> str:
    pct = cell.get(key)
    return "" if cell["method"] == "full" or pct is None else f"{pct:+.1f}%"


def breakdown_table(report: dict) -> Table:
    table = Table(title="Breakdown at the peak", title_justify="left")
    cols = ("batch size", "method", *[PART_LABELS[p] for p in PARTS], "other", "peak")
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for c in _ok_cells(report):
        parts = c.get("parts", {})
        table.add_row(str(c["batch_size"]), c["method"], *[human_bytes(parts.get(p, 0)) for p in PARTS],
                      human_bytes(c.get("other_bytes")), human_bytes(c["peak_bytes"]))
    return table


def _ok_cells(report: dict) -> list[dict]:
    order = {m: i for i, m in enumerate(report["methods"])}
    cells = [c for c in report["cells"] if c.get("status") in OK]
    return sorted(cells, key=lambda c: (c["batch_size"], order.get(c["method"], 0)))


def render_table(report: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(140, Console().width))
    notes: list[str] = []
    head = (f"{report['model']} · {report['task']} · seq_len {report['seq_len']} · {report['precision']} · "
            f"{report['mask_mode']} mode · ")
    if report["mode"] == "estimated":
        head += "estimated, nothing run"
    else:
        head += f"{report['steps']} steps per cell · {report.get('device') or 'no cell ran'}"
    parts: list[Any] = [Text(head, style="bold"), peak_table(report, notes)]
    if report["mode"] == "measured":
        parts.append(time_table(report))
    parts.append(breakdown_table(report))
    parts.append(Text(report["legend"], style="dim"))
    for i, note in enumerate(notes, 1):
        parts.append(Text(f"[{i}] {note}", style="red"))
    console.print(Group(*parts))


# ------------------------------------------------------------------------------------------- JSON / CSV
def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)


CSV_FIELDS = ("method", "batch_size", "status", "error", "peak_bytes", "peak_vs_full_pct",
              *[f"{p}_bytes" for p in PARTS], "other_bytes", *[f"time_{p}_s" for p in TIME_PHASES],
              "time_total_s", "time_vs_full_pct", "step_vs_full_pct", "trainable", "params", "peak_reserved_bytes")


def to_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for c in report["cells"]:
        row = {k: c.get(k) for k in CSV_FIELDS}
        for p in PARTS:
            row[f"{p}_bytes"] = (c.get("parts") or {}).get(p)
        t = c.get("time") or {}
        for p in TIME_PHASES:
            row[f"time_{p}_s"] = t.get(p)
        row["time_total_s"] = t.get("total")
        for key, digits in (("peak_vs_full_pct", 2), ("time_vs_full_pct", 2), ("step_vs_full_pct", 2),
                            *((f"time_{p}_s", 6) for p in (*TIME_PHASES, "total"))):
            if row[key] is not None:
                row[key] = round(row[key], digits)
        writer.writerow(row)
    return out.getvalue()


def to_markdown(report: dict) -> str:
    """The three tables as GitHub Markdown (for docs/performance.md)."""
    methods, sizes, idx = report["methods"], report["batch_sizes"], _index(report["cells"])
    lines = ["| batch size | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    notes = []
    for bs in sizes:
        row = []
        for m in methods:
            c = idx.get((m, bs))
            if c is None:
                row.append("-")
            elif c.get("status") not in OK:
                notes.append(f"{m} bs={bs}: {c.get('status')}: {c.get('error', '')}")
                row.append("OOM" if c.get("status") == "oom" else c.get("status", "error"))
            else:
                pct = c.get("peak_vs_full_pct")
                row.append(human_bytes(c["peak_bytes"]) + ("" if m == "full" or pct is None else f" ({pct:+.1f}%)"))
        lines.append(f"| {bs} | " + " | ".join(row) + " |")
    if notes:
        lines += [""] + [f"* {n}" for n in notes]
    cells = _ok_cells(report)
    if report["mode"] == "measured":
        phases = " | ".join(TIME_PHASES.values())
        lines += ["", f"| batch size | method | {phases} | total | vs full | {STEP_COL} |",
                  "|---:|---|" + "---:|" * (len(TIME_PHASES) + 3)]
        for c in cells:
            t = c.get("time") or {}
            lines.append(f"| {c['batch_size']} | {c['method']} | "
                         + " | ".join(f"{t.get(p, 0.0):.3f}" for p in TIME_PHASES)
                         + f" | {t.get('total', 0.0):.3f} | {_pct(c, 'time_vs_full_pct')} | "
                         + f"{_pct(c, 'step_vs_full_pct')} |")
    lines += ["", "| batch size | method | " + " | ".join(PART_LABELS[p] for p in PARTS) + " | other | peak |",
              "|---:|---|" + "---:|" * (len(PARTS) + 2)]
    for c in cells:
        parts = c.get("parts", {})
        lines.append(f"| {c['batch_size']} | {c['method']} | " + " | ".join(human_bytes(parts.get(p, 0)) for p in PARTS)
                     + f" | {human_bytes(c.get('other_bytes'))} | {human_bytes(c['peak_bytes'])} |")
    return "\n".join(lines) + "\n"
