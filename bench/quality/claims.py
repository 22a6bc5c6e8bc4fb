"""The staged protocol's report, from the committed run records alone: dev scores per method and task, the
learning rates the held-out split chose, the papers' claims as paired differences over seeds, a figure.

Paired: runs with the same seed share the training subset, data order and head initialisation across
methods (tests/test_paired_seeds.py), so the difference A - B is taken seed by seed and its mean gets a
t interval over the seeds. A claim reads:

* "better" (A above B): holds when the 95% interval lies above 0, reversed when it lies below 0, else not shown;
* "on par" (A no worse than B by more than MARGIN points): holds when the interval's lower end is above
  -MARGIN, reversed when its upper end is below -MARGIN, else not shown;
* "steadier" (A's seed-to-seed std below B's): the Pitman-Morgan test of two paired variances (the
  correlation of A+B with A-B; p < 0.05), reversed when A's is the larger and significant.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from scipy import stats

MARGIN = 1.0  # points (x100 of the metric) of the "on par" claims
CLAIMS = [  # (A, B, kind, what the paper says)
    ("dps-mix", "full", "better", "DPS: Mix above vanilla fine-tuning"),
    ("dps-mix", "full", "steadier", "DPS: Mix more stable across seeds than vanilla fine-tuning"),
    ("child-tuning-d", "full", "better", "Child-Tuning: D above vanilla fine-tuning"),
    ("stochastic", "bitfit", "better", "Stochastic Tuning: ~2 points above BitFit on average"),
    ("top", "full", "on par", "Stochastic Tuning: Top (0.1% of weights) on par with full fine-tuning"),
    ("stochastic", "full", "on par", "Stochastic Tuning: Stochastic on par with full fine-tuning"),
]


def dev_split(task: str) -> str:
    from sftune.tasks import get_task

    return get_task(task).eval_splits[0]


def main_metric(task: str) -> str:
    from sftune.tasks import get_task

    return get_task(task).main_metric


def points(rec: dict, split: str | None = None) -> float:
    """The run's main metric on SPLIT (default: dev) x 100; NaN for a diverged run."""
    v = rec["metrics"].get(split or dev_split(rec["task"]), {}).get(main_metric(rec["task"]))
    return 100 * v if v is not None else math.nan


def final_runs(known: dict, profile: dict, setting: str, chosen) -> dict[tuple[str, str], dict[int, dict]]:
    """(task, method) -> {seed: record} at the method's chosen learning rate."""
    cells = {}
    tasks = profile["tasks"] if setting == "main" else profile["settings"][setting]["tasks"]
    for task in tasks:
        for g in profile["groups"].values():
            for m in g["methods"]:
                lr = chosen(profile, known, task, m)
                if lr is not None:
                    cells[(task, m)] = {s: known[(setting, task, m, lr, s)] for s in range(1, profile["seeds"] + 1)
                                        if (setting, task, m, lr, s) in known}
    return cells


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(a: dict[int, dict], b: dict[int, dict], kind: str) -> dict | None:
    """Paired comparison of two cells over their common seeds (None with fewer than 2)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    xa, xb = [points(a[s]) for s in seeds], [points(b[s]) for s in seeds]
    return compare(xa, xb, kind)


def compare(xa: list[float], xb: list[float], kind: str) -> dict:
    n = len(xa)
    d = [x - y for x, y in zip(xa, xb)]
    mean = statistics.fmean(d)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(d) / math.sqrt(n)
    out = {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half,
           "std_a": statistics.stdev(xa), "std_b": statistics.stdev(xb)}
    if kind == "better":
        out["verdict"] = "holds" if out["lo"] > 0 else "reversed" if out["hi"] < 0 else "not shown"
    elif kind == "on par":
        out["verdict"] = "holds" if out["lo"] > -MARGIN else "reversed" if out["hi"] < -MARGIN else "not shown"
    else:  # steadier: Pitman-Morgan, Var(A) = Var(B) iff corr(A + B, A - B) = 0
        s = [x + y for x, y in zip(xa, xb)]
        p = stats.pearsonr(s, d).pvalue if statistics.pstdev(d) > 0 and statistics.pstdev(s) > 0 else 1.0
        out["p"] = p
        lower = out["std_a"] < out["std_b"]
        out["verdict"] = "not shown" if p >= 0.05 else "holds" if lower else "reversed"
    return out


def _fmt(c: dict, kind: str) -> str:
    if kind == "steadier":
        return f"std {c['std_a']:.2f} vs {c['std_b']:.2f} (p {c['p']:.2f})"
    return f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]"


def _why(cell: dict[int, dict]) -> str:
    """What the runs of a cell below the majority did, measured, means over seeds: the training loss (first
    logged step -> last steps) and, for classifiers, the dev ranking (AUC; the share given the one label
    predicted most, and that label's probability range)."""
    parts = []
    pairs = [(r["loss_first"], r["loss_last"]) for r in cell.values() if "loss_last" in r]
    if pairs:
        parts.append(f"loss {statistics.fmean(p[0] for p in pairs):.3f} -> {statistics.fmean(p[1] for p in pairs):.3f}")
    ranks = [r["ranking"][dev_split(r["task"])] for r in cell.values() if dev_split(r["task"]) in r.get("ranking", {})]
    if ranks:
        auc = [x["auc"] for x in ranks]
        spread = f" ± {statistics.stdev(auc):.2f}" if len(auc) > 1 else ""
        parts.append(f"dev AUC {statistics.fmean(auc):.2f}{spread}")
        labels = {x["top_label"] for x in ranks}
        if len(labels) == 1:
            parts.append(f"{100 * statistics.fmean(x['top_share'] for x in ranks):.0f}% predicted "
                         f"{labels.pop()!r} (p {min(x['top_p'][0] for x in ranks):.2f}-"
                         f"{max(x['top_p'][1] for x in ranks):.2f})")
    return f" ({'; '.join(parts)})" if parts else ""


def ranking_table(cells: dict, tasks: list[str], methods: list[str]) -> list[str]:
    """Dev ROC AUC x 100 per method and classification task, mean ± std (seeds): whether a run ranks the
    examples at all, whatever label the 0.5 threshold gives them (50 = no signal)."""
    tasks = [t for t in tasks if any("ranking" in r for (tt, _), c in cells.items() if tt == t for r in c.values())]
    if not tasks:
        return []
    rows = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in methods:
        row = []
        for t in tasks:
            auc = [100 * r["ranking"][dev_split(t)]["auc"] for r in cells.get((t, m), {}).values()
                   if dev_split(t) in r.get("ranking", {})]
            row.append("{:.1f} ± {:.1f} ({})".format(*mean_std(auc), len(auc)) if auc else "—")
        rows.append(f"| {m} | " + " | ".join(row) + " |")
    return rows


def claim_rows(cells: dict, tasks: list[str]) -> list[str]:
    """One Markdown row per claim: per task and averaged over the tasks (per seed, then paired)."""
    rows = ["| claim (A vs B) | " + " | ".join(tasks) + " | mean of tasks | verdict |",
            "|---|" + "---|" * (len(tasks) + 2)]
    for a, b, kind, text in CLAIMS:
        row, per_seed_a, per_seed_b = [], {}, {}
        for t in tasks:
            ca, cb = cells.get((t, a), {}), cells.get((t, b), {})
            c = paired(ca, cb, kind)
            row.append(f"{_fmt(c, kind)} {c['verdict']}" if c else "—")
            for s in set(ca) & set(cb):
                per_seed_a.setdefault(s, {})[t] = points(ca[s])
                per_seed_b.setdefault(s, {})[t] = points(cb[s])
        full = sorted(s for s in per_seed_a if len(per_seed_a[s]) == len(tasks))
        avg = None
        if len(full) >= 2:
            avg = compare([statistics.fmean(per_seed_a[s].values()) for s in full],
                          [statistics.fmean(per_seed_b[s].values()) for s in full], kind)
        rows.append(f"| {text} ({a} vs {b}, {kind}) | " + " | ".join(row)
                    + f" | {_fmt(avg, kind) if avg else '—'} | **{avg['verdict'] if avg else 'pending'}** |")
    return rows


def score_table(cells: dict, tasks: list[str], methods: list[str], majority: dict,
                chosen_lrs: dict) -> tuple[list[str], dict]:
    """Methods x tasks, dev main metric mean ± std (n) [chosen lr]; and per method the tasks above majority."""
    rows = ["| method | " + " | ".join(tasks) + " | above majority |", "|---|" + "---|" * (len(tasks) + 1),
            "| majority class | " + " | ".join(f"{majority[t]:.1f}" for t in tasks) + " | — |"]
    above = {}
    for m in methods:
        row, above[m] = [], []
        for t in tasks:
            vals = [points(r) for r in cells.get((t, m), {}).values()]
            if not vals:
                row.append("—")
                continue
            mu, sd = mean_std(vals)
            row.append(f"{mu:.1f} ± {sd:.1f} ({len(vals)}) @{chosen_lrs.get((t, m), 0):g}")
            if mu > majority[t]:
                above[m].append(t)
        done = sum(1 for t in tasks if cells.get((t, m)))
        rows.append(f"| {m} | " + " | ".join(row) + f" | {f'{len(above[m])} of {done}' if done else '—'} |")
    return rows, above


def grid_table(known: dict, profile: dict, tasks: list[str], methods: list[str]) -> list[str]:
    """The grid stage: held-out main metric (seed 1) per learning rate; the chosen one in bold."""
    from staged import HELDOUT, chosen_lr, group_of

    rows = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in methods:
        row = []
        for t in tasks:
            parts, best = [], chosen_lr(profile, known, t, m)
            for lr in group_of(profile, m)["lr_grid"]:
                r = known.get(("main", t, m, float(lr), 1))
                if r is not None:
                    s = f"{lr:g}: {points(r, HELDOUT):.1f}"
                    parts.append(f"**{s}**" if best == float(lr) else s)
            row.append(", ".join(parts) or "—")
        rows.append(f"| {m} | " + " | ".join(row) + " |")
    return rows


def figure(cells: dict, tasks: list[str], methods: list[str], majority: dict, path: Path) -> bool:
    """Grouped bars (methods within each task), error bars = std over seeds, majority as a dash per task."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'sftune[plot]'): no figure", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(methods)
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        xs, mus, sds = [], [], []
        for j, t in enumerate(tasks):
            vals = [points(r) for r in cells.get((t, m), {}).values()]
            if vals:
                mu, sd = mean_std(vals)
                xs.append(j - 0.4 + width * (i + 0.5))
                mus.append(mu)
                sds.append(sd)
        if xs:  # an empty bar group would still take a legend entry, in the default colour
            ax.bar(xs, mus, width, yerr=sds, capsize=2, label=m, color=cmap(i % 10))
    for j, t in enumerate(tasks):
        ax.hlines(majority[t], j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t} ({main_metric(t)})" for t in tasks])
    ax.set_ylabel("dev score x 100 (mean ± std over seeds)")
    ax.set_title("MiniLM-L6, staged protocol (dashed: majority class; STS-B: 0)")
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(profile_name: str, profile: dict, known: dict, majority_raw: dict, figure_path: Path | None,
           command: str) -> str:
    """The Markdown block for docs/results.md, from the records (KNOWN) and the majority scores."""
    from staged import chosen_lr

    tasks = list(profile["tasks"])
    methods = [m for g in profile["groups"].values() for m in g["methods"]]
    majority = {t: 100 * majority_raw[t][main_metric(t)] for t in tasks}
    chosen = {(t, m): chosen_lr(profile, known, t, m) for t in tasks for m in methods}
    cells = final_runs(known, profile, "main", chosen_lr)
    runs = list(known.values())
    # wall seconds of the session that finished a run; train seconds also count a resumed run's earlier part
    cpu_h = sum(max(r["wall_seconds"], r["train_seconds"]) for r in runs) / 3600
    commits = sorted({(r["commit"] or "?")[:7] for r in runs})
    lines = [f"### Profile `{profile_name}`: {profile.get('description', '')}", "",
             f"* command: `{command}` (from the repository root; resumes, skipping every recorded run)",
             f"* records: {len(runs)} runs in `{profile['records']}/` (commits {', '.join(commits) or '—'}); "
             f"run time summed over runs (one thread each): {cpu_h:.2f} h",
             "* cells: dev " + ", ".join(f"{t} {main_metric(t)}" for t in tasks)
             + " x 100, mean ± sample std (seeds) @ the learning rate chosen on `heldout`; "
             "majority: the training set's most frequent label (STS-B: a constant, correlation 0)", "",
             "**Dev scores at the chosen learning rate**", ""]
    rows, above = score_table(cells, tasks, methods, majority, chosen)
    lines += rows + [""]
    below = [f"{m} on {t}{_why(cells[(t, m)])}" for m in methods for t in tasks
             if cells.get((t, m)) and t not in above[m]]
    lines += ["Not above the majority class (training loss, first logged step -> last steps; dev ranking AUC, "
              "the share of dev given the most predicted label and its probability range; means over seeds): "
              + ("; ".join(below) if below else "none") + ".", ""]
    ranks = ranking_table(cells, tasks, methods)
    if ranks:
        lines += ["**Dev ranking** (ROC AUC x 100 of the predicted probabilities, threshold-free: 50 = no "
                  "signal; a run can rank well and still give every example the majority label)", ""]
        lines += ranks + [""]
    lines += ["**Learning-rate grid** (held-out main metric x 100, seed 1; chosen in bold)", ""]
    lines += grid_table(known, profile, tasks, methods) + [""]
    lines += ["**The papers' claims, paired over seeds** (A - B in points, mean [95% t interval]; "
              f"on par: margin {MARGIN:g} point)", ""]
    lines += claim_rows(cells, tasks) + [""]
    for setting, s in profile["settings"].items():
        if setting == "main":
            continue
        low = final_runs(known, profile, setting, chosen_lr)
        lines += [f"**{s.get('title', setting)}** ({s['train_size']} training examples, {s.get('steps', 'the same')} "
                  "steps, learning rate as chosen in the main setting)", "",
                  "| task | " + " | ".join(s["methods"]) + " | A - B, mean [95%] | verdict | std A vs B | verdict |",
                  "|---|" + "---|" * (len(s["methods"]) + 4)]
        a, b = s["methods"][:2]
        for t in s["tasks"]:
            vals = {m: [points(r) for r in low.get((t, m), {}).values()] for m in s["methods"]}
            cell = ["{:.1f} ± {:.1f} ({})".format(*mean_std(v), len(v)) if v else "—" for v in vals.values()]
            for kind in ("better", "steadier"):
                c = paired(low.get((t, a), {}), low.get((t, b), {}), kind)
                cell += [_fmt(c, kind), c["verdict"]] if c else ["—", "pending"]
            lines.append(f"| {t} | " + " | ".join(cell) + " |")
        lines.append("")
    if figure_path is not None and figure(cells, tasks, methods, majority, figure_path):
        lines += [f"![dev scores per method and task]({figure_path.name})", ""]
    return "\n".join(lines)
