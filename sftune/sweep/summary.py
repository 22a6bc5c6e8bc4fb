"""Summaries of a sweep: per config (method + grid point) the mean and sample std (ddof=1; 0 with one seed)
of every metric over its seeds, the best config per method (highest mean main metric), and the files

    results.csv    one row per run: method, config, grid values, seed, status, metrics, cause of a failure
    summary.csv    one row per config: seeds done, mean and std of every metric, best
    summary.json   both, plus the best config per method and the failed runs (what --format json prints)

Metrics are named SPLIT/METRIC (`validation/accuracy`, `validation_matched/accuracy`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from sftune.artifacts import atomic_write_json, atomic_write_text

DONE = ("complete", "cached")


@dataclass
class Record:
    """One run as the summary sees it."""

    task: str
    method: str
    config: str
    seed: int | None
    run_dir: str  # relative to the sweep's output directory
    status: str  # complete, cached, diverged, failed, interrupted, queued, waiting, running
    params: dict[str, str] = field(default_factory=dict)
    action: str = ""
    cause: str = ""
    results: dict | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return flat_metrics(self.results) if self.results and self.status in DONE else {}


def flat_metrics(results: dict) -> dict[str, float]:
    return {f"{split}/{name}": value for split, values in (results.get("metrics") or {}).items()
            for name, value in values.items()}


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def main_metric_of(records: list[Record], task: str | None = None) -> str | None:
    for r in records:
        mm = (r.results or {}).get("main_metric")
        if mm and r.status in DONE:
            return f"{mm['split']}/{mm['name']}"
    if task:
        from sftune.tasks import get_task

        t = get_task(task)
        return f"{t.eval_splits[0]}/{t.main_metric}"
    return None


def summarize(records: list[Record], task: str | None = None) -> dict:
    main = main_metric_of(records, task)
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.method, r.config), []).append(r)
    configs = []
    for (method, config), rs in groups.items():
        done = [r for r in rs if r.metrics]
        names = list(dict.fromkeys(k for r in done for k in r.metrics))
        metrics = {}
        for name in names:
            values = [r.metrics[name] for r in done if name in r.metrics]
            mean, std = mean_std(values)
            metrics[name] = {"mean": mean, "std": std, "n": len(values)}
        configs.append({"method": method, "config": config, "params": dict(rs[0].params),
                        "seeds": sorted(r.seed for r in done if r.seed is not None), "n_seeds": len(done),
                        "n_runs": len(rs), "failed": sum(r.status == "failed" for r in rs),
                        "diverged": sum(r.status == "diverged" for r in rs), "metrics": metrics})
    best: dict[str, dict] = {}
    for c in configs:
        score = c["metrics"].get(main, {}).get("mean") if main else None
        if score is None:
            continue
        if c["method"] not in best or score > best[c["method"]]["mean"]:
            best[c["method"]] = {"config": c["config"], "params": c["params"], "mean": score,
                                 "std": c["metrics"][main]["std"], "n_seeds": c["n_seeds"]}
    for c in configs:
        c["best"] = best.get(c["method"], {}).get("config") == c["config"]
    runs = [{"method": r.method, "config": r.config, "params": r.params, "seed": r.seed, "run_dir": r.run_dir,
             "status": r.status, "action": r.action, "cause": r.cause, "metrics": r.metrics} for r in records]
    failed = [{"run_dir": r.run_dir, "cause": r.cause} for r in records if r.status == "failed"]
    # A diverged run is a result (this configuration does not train), not a crash: over, never retried,
    # left out of the means and counted apart.
    diverged = [{"run_dir": r.run_dir, "cause": r.cause} for r in records if r.status == "diverged"]
    counts = {"runs": len(records), "done": sum(r.status in DONE for r in records), "failed": len(failed),
              "diverged": len(diverged), "interrupted": sum(r.status == "interrupted" for r in records)}
    counts["not_run"] = (counts["runs"] - counts["done"] - counts["failed"] - counts["diverged"]
                         - counts["interrupted"])
    return {"main_metric": main, "complete": counts["done"] + counts["diverged"] == counts["runs"],
            "counts": counts, "configs": configs, "best": best, "failed": failed, "diverged": diverged,
            "runs": runs}


# ---------------------------------------------------------------------------------------------------- files
def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def results_csv(doc: dict) -> str:
    params = list(dict.fromkeys(k for r in doc["runs"] for k in r["params"]))
    metrics = list(dict.fromkeys(k for r in doc["runs"] for k in r["metrics"]))
    header = ["method", "config", *params, "seed", "status", "run_dir", *metrics, "cause"]
    rows = [[r["method"], r["config"], *[r["params"].get(p, "") for p in params], r["seed"], r["status"],
             r["run_dir"], *[r["metrics"].get(m, "") for m in metrics], r["cause"]] for r in doc["runs"]]
    return _csv(header, rows)


def summary_csv(doc: dict) -> str:
    params = list(dict.fromkeys(k for c in doc["configs"] for k in c["params"]))
    metrics = list(dict.fromkeys(k for c in doc["configs"] for k in c["metrics"]))
    header = ["method", "config", *params, "n_seeds", *[f"{m} {s}" for m in metrics for s in ("mean", "std")],
              "best"]
    rows = []
    for c in doc["configs"]:
        stats = [c["metrics"][m][s] if m in c["metrics"] else "" for m in metrics for s in ("mean", "std")]
        rows.append([c["method"], c["config"], *[c["params"].get(p, "") for p in params], c["n_seeds"], *stats,
                     "yes" if c["best"] else ""])
    return _csv(header, rows)


def write_files(out: Path, doc: dict) -> None:
    """results.csv, summary.csv and summary.json, each written atomically."""
    atomic_write_text(out / "results.csv", results_csv(doc))
    atomic_write_text(out / "summary.csv", summary_csv(doc))
    atomic_write_json(out / "summary.json", doc)


# ------------------------------------------------------------------------------------------------- scanning
def scan(root: Path) -> list[Record]:
    """Complete runs under `root` (any layout): config = the run directory's parent name, as in a sweep."""
    records = []
    for path in sorted(Path(root).rglob("results.json")):
        rel = path.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        status = results.get("status")
        if status not in ("complete", "diverged"):
            continue
        config = rel.parent.name if rel.parent.parts else rel.name
        d = results.get("diverged") or {}
        cause = f"diverged at step {d.get('step')}: {d.get('what')} is {d.get('value')}" if d else ""
        records.append(Record(task=results.get("task", ""), method=results.get("method", ""), config=config,
                              seed=results.get("seed"), run_dir=str(rel), status=status, cause=cause,
                              params=parse_slug(config), results=results))
    return records


def parse_slug(slug: str) -> dict[str, str]:
    out = {}
    for part in slug.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            return {}
        out[key] = value
    return out
