"""Summarise an out-of-domain transfer experiment: one `sftune transfer` run directory per (method, seed).

    python bench/transfer_report.py RUNS_DIR [--baseline full] [--in-domain test] [--markdown OUT.md]

RUNS_DIR holds METHOD-seedS/ directories (each with results.json and transfer.json, as `sftune transfer ...
-o RUNS_DIR/METHOD-seedS` writes them). Printed (markdown):

* accuracy per method: mean ± sample std over seeds, for the in-domain split (`results.json`) and every target
  in `transfer.json`;
* paired differences against the baseline method (same seed, same examples): the mean over seeds, a 95% t
  interval over the per-seed differences (seed variation; wide with few seeds), and a 95% paired bootstrap
  interval over examples (2,000 resamples of the evaluation rows; the seed-mean difference is recomputed on
  each, so it covers which examples were drawn, not which seeds);
* for 2-way targets, the ROC AUC of the model's P(entailment) against gold entailment (mean ± std over seeds):
  threshold-free, so it shows whether a model ranks entailed pairs higher even when its argmax never says
  entailment out of domain (a supplement; the protocol's figure is the mapped accuracy).

Only complete runs (results.json and every target) are used; a method is compared on the seeds both have.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

RUN_RE = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")


def correct_vectors(run: Path, in_domain: str) -> dict[str, np.ndarray]:
    """Per-example correctness (0/1, in row order) for the in-domain split and every transfer target."""
    out = {}
    preds = run / "predictions" / f"{in_domain}.jsonl"
    if preds.is_file():
        rows = [json.loads(x) for x in preds.read_text().splitlines()]
        rows.sort(key=lambda r: r["idx"])
        out[f"in-domain {in_domain}"] = np.array([r["prediction"] == r["label"] for r in rows], dtype=float)
    doc = json.loads((run / "transfer.json").read_text())
    for name, entry in doc["targets"].items():
        rows = [json.loads(x) for x in (run / entry["predictions"]).read_text().splitlines()]
        rows.sort(key=lambda r: r["idx"])
        out[name] = np.array([r["correct"] for r in rows], dtype=float)
    return out


def entailment_aucs(run: Path) -> dict[str, tuple[float, float]]:
    """(ROC AUC of P(entailment), share of rows predicted entailment) on every 2-way target with an entailment
    class; P(entailment) is the source model's probability of its own entailment label."""
    from sklearn.metrics import roc_auc_score

    doc = json.loads((run / "transfer.json").read_text())
    k = doc["source_labels"].index("entailment")
    out = {}
    for name, entry in doc["targets"].items():
        if len(entry["labels"]) == 2 and "entailment" in entry["labels"]:
            rows = [json.loads(x) for x in (run / entry["predictions"]).read_text().splitlines()]
            gold = [r["label"] == "entailment" for r in rows]
            out[name] = (roc_auc_score(gold, [r["probabilities"][k] for r in rows]),
                         sum(r["prediction"] == "entailment" for r in rows) / len(rows))
    return out


def load(root: Path, in_domain: str) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    runs: dict[str, dict[int, dict[str, np.ndarray]]] = defaultdict(dict)
    for d in sorted(root.iterdir()):
        m = RUN_RE.match(d.name)
        if m and (d / "results.json").is_file() and (d / "transfer.json").is_file():
            runs[m["method"]][int(m["seed"])] = correct_vectors(d, in_domain)
    return runs


def paired(base: dict[int, dict], other: dict[int, dict], metric: str, rng: np.random.Generator):
    seeds = sorted(s for s in base if s in other and metric in base[s] and metric in other[s])
    if not seeds:
        return None
    diffs = np.stack([other[s][metric] - base[s][metric] for s in seeds])  # seeds x examples
    per_seed = diffs.mean(1)
    mean = per_seed.mean()
    if len(seeds) > 1:
        half = stats.t.ppf(0.975, len(seeds) - 1) * per_seed.std(ddof=1) / np.sqrt(len(seeds))
        t_ci = (mean - half, mean + half)
    else:
        t_ci = None
    n = diffs.shape[1]
    boots = np.array([diffs[:, idx].mean() for idx in (rng.integers(0, n, n) for _ in range(2000))])
    return seeds, per_seed, mean, t_ci, tuple(np.percentile(boots, [2.5, 97.5]))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(root: Path, baseline: str, in_domain: str) -> str:
    runs = load(root, in_domain)
    if baseline not in runs:
        raise SystemExit(f"no complete {baseline}-seedS run under {root}")
    metrics = sorted({k for m in runs.values() for r in m.values() for k in r},
                     key=lambda k: (not k.startswith("in-domain"), k))
    order = [baseline] + sorted(m for m in runs if m != baseline)
    lines = ["Accuracy (%), mean ± std over seeds (n = seeds):", "",
             "| method | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method in order:
        cells = []
        for k in metrics:
            accs = [r[k].mean() for r in runs[method].values() if k in r]
            sd = f" ± {pct(np.std(accs, ddof=1))}" if len(accs) > 1 else ""
            cells.append(f"{pct(np.mean(accs))}{sd}" if accs else "–")
        lines.append(f"| {method} | {len(runs[method])} | " + " | ".join(cells) + " |")
    aucs = {m: {s: entailment_aucs(root / f"{m}-seed{s}") for s in runs[m]} for m in order}
    auc_targets = sorted({t for m in aucs.values() for a in m.values() for t in a})
    if auc_targets:
        lines += ["", "2-way targets: ROC AUC of P(entailment), and % of rows predicted entailment (after the "
                  "mapping), mean ± std over seeds:", "",
                  "| method | " + " | ".join(f"{t} AUC | {t} % pred. entailment" for t in auc_targets) + " |",
                  "|---|" + "---|---|" * len(auc_targets)]
        for method in order:
            cells = []
            for t in auc_targets:
                for j, show in ((0, lambda v: f"{v:.3f}"), (1, lambda v: f"{100 * v:.1f}")):
                    vals = [a[t][j] for a in aucs[method].values() if t in a]
                    sd = f" ± {show(np.std(vals, ddof=1))}" if len(vals) > 1 else ""
                    cells.append(show(np.mean(vals)) + sd)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired difference against {baseline} (percentage points; per-seed values; 95% t interval "
              "over seeds; 95% paired bootstrap interval over examples):", "",
              "| method | metric | seeds | per seed | mean | t 95% (seeds) | bootstrap 95% (examples) |",
              "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for method in order[1:]:
        for k in metrics:
            res = paired(runs[baseline], runs[method], k, rng)
            if res is None:
                continue
            seeds, per_seed, mean, t_ci, b_ci = res
            t_txt = f"[{pct(t_ci[0])}, {pct(t_ci[1])}]" if t_ci else "–"
            lines.append(f"| {method} | {k} | {','.join(map(str, seeds))} | "
                         f"{', '.join(f'{100 * d:+.1f}' for d in per_seed)} | {100 * mean:+.1f} | {t_txt} | "
                         f"[{pct(b_ci[0])}, {pct(b_ci[1])}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--baseline", default="full")
    ap.add_argument("--in-domain", default="test", help="the run's own eval split reported as in-domain")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    text = report(args.root, args.baseline, args.in_domain)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
