"""Training curves of run directories: loss, learning rate, the validation metric and the selected/changed
shares per logged step, read from each run's metrics.jsonl.

Runs are grouped by the directory that holds them: the seeds of one sweep config share a parent, so a sweep is
drawn as one line per config (the mean over its seeds) with a band of ± one standard deviation; runs given
one by one are drawn as one line each. matplotlib is an optional extra (`pip install sftune[plot]`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from sftune.artifacts import read_jsonl
from sftune.errors import UsageError

PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("metric", "validation metric"),
          ("selected", "selected per step (%)"), ("changed", "changed per step (%)"))


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'sftune[plot]' (or pip install matplotlib).") from None
    return plt


def find_runs(paths: list[Path]) -> list[tuple[Path, str]]:
    """(run directory, group label) for every run under `paths`. A path that is a run directory is its own
    group; runs found below a path are grouped by their parent directory, relative to that path."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UsageError(f"{path} is not a directory. Give run directories or a sweep directory.")
        if (path / "metrics.jsonl").is_file():
            found.append((path, path.name))
            continue
        runs = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not runs:
            raise UsageError(f"{path} holds no run directory (no metrics.jsonl below it). Give directories "
                             "written by 'sftune train' or 'sftune sweep'.")
        for run in runs:
            label = run.parent.relative_to(path).as_posix()
            found.append((run, label if label != "." else run.name))
    return found


def main_metric_key(run: Path, evals: list[dict]) -> str | None:
    import json

    results = run / "results.json"
    if results.is_file():
        main = json.loads(results.read_text()).get("main_metric") or {}
        if main:
            return f"{main['split']}/{main['name']}"
    keys = [k for r in evals for k in r if "/" in k]
    return keys[0] if keys else None


def curves(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per panel: steps and values. Shares become percentages, as on the screen."""
    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    out = {}
    for key in ("loss", "lr", "selected", "changed"):
        rows = [(r["step"], r[key]) for r in train if key in r]
        if rows:
            steps, values = map(np.array, zip(*rows))
            out[key] = (steps, values * 100 if key in ("selected", "changed") else values)
    metric = main_metric_key(run, evals)
    rows = [(r["step"], r[metric]) for r in evals if metric in r]
    if rows:
        out["metric"] = tuple(map(np.array, zip(*rows)))
    out["metric_name"] = metric
    return out


def _mean_band(series: list[tuple[np.ndarray, np.ndarray]]):
    """Mean and standard deviation over seeds at the steps every seed logged."""
    common = set(series[0][0].tolist())
    for steps, _ in series[1:]:
        common &= set(steps.tolist())
    steps = np.array(sorted(common))
    stack = np.stack([values[np.isin(s, steps)] for s, values in series])
    return steps, stack.mean(0), stack.std(0)


def plot_runs(paths: list[Path], out: Path) -> Path:
    """Draw the panels for the runs under `paths` into `out` (.png, .svg or .pdf); returns `out`."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"plot file {out}: expected a name ending in .png, .svg or .pdf.")
    groups: dict[str, list[dict]] = defaultdict(list)
    for run, label in find_runs(paths):
        groups[label].append(curves(run))
    metric_names = sorted({c["metric_name"] for runs in groups.values() for c in runs if c["metric_name"]})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.ravel()
    for ax, (key, title) in zip(axes, PANELS):
        ax.set_title(title if key != "metric" or not metric_names else " / ".join(metric_names))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        drawn = False
        for i, (label, runs) in enumerate(groups.items()):
            series = [c[key] for c in runs if key in c]
            if not series:
                continue
            color = f"C{i % 10}"
            name = label if len(series) == 1 else f"{label} (mean ± std, {len(series)} runs)"
            marker = "o" if key == "metric" else None
            if len(series) == 1:
                ax.plot(*series[0], color=color, label=name, marker=marker, markersize=3)
            else:
                steps, mean, std = _mean_band(series)
                if key == "metric":  # few evaluations: error bars show a band even at a single point
                    ax.errorbar(steps, mean, yerr=std, color=color, label=name, marker=marker, markersize=3,
                                capsize=3)
                else:
                    ax.plot(steps, mean, color=color, label=name)
                    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
            drawn = True
        if key == "lr" and drawn:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:5]:  # the legend of the panel with the most lines
        these, names = ax.get_legend_handles_labels()
        if len(these) > len(handles):
            handles, labels = these, names
    steps = [c[k][0] for runs in groups.values() for c in runs for k, _ in PANELS if k in c]
    if steps:  # one step range for every panel (a lone evaluation would otherwise get a range of its own)
        lo, hi = min(x.min() for x in steps), max(x.max() for x in steps)
        pad = max((hi - lo) * 0.03, 0.5)
        for ax in axes[:5]:
            ax.set_xlim(lo - pad, hi + pad)
    axes[5].axis("off")
    axes[5].legend(handles, labels, loc="center", fontsize="small", frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
