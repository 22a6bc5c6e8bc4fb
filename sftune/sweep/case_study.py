"""The easy/hard case study (DPS appendix A): for each method, over the seeds of its best config, the share
of dev examples that more than half of the runs get right (easy) and that more than half get wrong (hard).
The rest (exactly half right, with an even number of runs) are `mixed`.

It reads each run's `predictions/SPLIT.jsonl` (rows with idx, label, prediction) and compares examples by
`idx`, over the examples every run predicted. Regression tasks (STS-B) have no right or wrong: skipped.
"""

from __future__ import annotations

from pathlib import Path

from sftune.artifacts import read_jsonl
from sftune.errors import UsageError
from sftune.plots import require_matplotlib


def easy_hard(run_dirs: list[Path]) -> dict[str, dict]:
    """Per split present in every run: counts and shares of easy, hard and mixed examples."""
    if not run_dirs:
        return {}
    splits = set.intersection(*[{p.stem for p in (d / "predictions").glob("*.jsonl")} for d in run_dirs])
    out = {}
    for split in sorted(splits):
        tables = [{row["idx"]: row for row in read_jsonl(d / "predictions" / f"{split}.jsonl")} for d in run_dirs]
        common = sorted(set.intersection(*[set(t) for t in tables]))
        if not common or not isinstance(tables[0][common[0]]["label"], str):
            continue  # regression (numeric labels) or nothing in common
        n = len(tables)
        right = [sum(t[i]["prediction"] == t[i]["label"] for t in tables) for i in common]
        easy = sum(2 * c > n for c in right)
        hard = sum(2 * (n - c) > n for c in right)
        total = len(common)
        out[split] = {"runs": n, "examples": total, "easy": easy, "hard": hard, "mixed": total - easy - hard,
                      "easy_share": easy / total, "hard_share": hard / total,
                      "mixed_share": (total - easy - hard) / total}
    return out


def case_study(summary: dict, root: Path) -> dict:
    """Per method: its best config (summary["best"]) and the easy/hard shares over that config's seeds."""
    methods = {}
    for method, best in summary["best"].items():
        dirs = [Path(root) / r["run_dir"] for r in summary["runs"]
                if r["method"] == method and r["config"] == best["config"] and r["metrics"]]
        methods[method] = {"config": best["config"], "seeds": len(dirs), "splits": easy_hard(dirs)}
    return {"methods": methods}


def plot(doc: dict, path: Path) -> Path:
    """A grouped bar chart (easy and hard share per method, first split); needs matplotlib."""
    plt = require_matplotlib()
    names = [m for m, v in doc["methods"].items() if v["splits"]]
    if not names:
        raise UsageError("--plot: no classification predictions to plot.")
    split = next(iter(doc["methods"][names[0]]["splits"]))
    easy = [100 * doc["methods"][m]["splits"].get(split, {}).get("easy_share", 0) for m in names]
    hard = [100 * doc["methods"][m]["splits"].get(split, {}).get("hard_share", 0) for m in names]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5))
    ax.bar([x - 0.2 for x in xs], easy, width=0.4, label="easy")
    ax.bar([x + 0.2 for x in xs], hard, width=0.4, label="hard")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_ylabel(f"% of {split} examples")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
