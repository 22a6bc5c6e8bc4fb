"""Evaluating a run on its targets: argmax over the source labels, then the mapping (the protocol maps
predicted labels, it does not sum probabilities); accuracy, per-class counts and the confusion after mapping.

    artifacts   RUN_DIR/transfer.json (flat `metrics`: {"rte/accuracy": ...}) and
                RUN_DIR/transfer/<target>.jsonl (gold, 3-way prediction, mapped prediction, probabilities)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from sftune.artifacts import RunDir, atomic_write_json, atomic_write_text, read_json
from sftune.run import stored_config
from sftune.tasks import get_task
from sftune.transfer.source_model import SourceModel
from sftune.transfer.target_data import TargetData


def source_labels_of(task_name: str) -> tuple[str, ...] | None:
    return get_task(task_name).label_names


def score(target: TargetData, source_labels: tuple[str, ...], mapping: dict[str, str], probs: torch.Tensor,
          idxs: list[int]) -> tuple[dict, list[dict]]:
    """Metrics and per-example rows for one target: argmax over the source labels, then the mapping."""
    gold = [target.labels[y] for y in target.dataset["label"]]
    src_pred = [source_labels[k] for k in probs.argmax(-1).tolist()]
    mapped = [mapping[s] for s in src_pred]
    correct = sum(g == m for g, m in zip(gold, mapped))
    confusion = {g: {p: 0 for p in target.labels} for g in target.labels}
    for g, m in zip(gold, mapped):
        confusion[g][m] += 1
    gold_counts, mapped_counts, src_counts = Counter(gold), Counter(mapped), Counter(src_pred)
    n = len(gold)
    summary = {
        "split": target.split,
        "data": target.origin,
        "examples": n,
        "dropped_unlabelled": target.dropped,
        "labels": list(target.labels),
        "label_map": dict(mapping),
        "accuracy": correct / n if n else 0.0,
        "correct": correct,
        "counts": {"gold": {c: gold_counts.get(c, 0) for c in target.labels},
                   "predicted": {c: mapped_counts.get(c, 0) for c in target.labels},
                   "predicted_source": {c: src_counts.get(c, 0) for c in source_labels}},
        "per_class_accuracy": {c: (confusion[c][c] / gold_counts[c]) if gold_counts.get(c) else None
                               for c in target.labels},
        "confusion": confusion,
    }
    rows = [{"idx": i, "label": g, "source_prediction": s, "prediction": m, "correct": g == m,
             "probabilities": p} for i, g, s, m, p in zip(idxs, gold, src_pred, mapped, probs.tolist())]
    return summary, rows


def evaluate_run(run: RunDir, source: str, targets: list[TargetData], mappings: dict[str, dict[str, str]],
                 out_dir: Path, on_target=None, reuse: bool = False) -> dict:
    """Evaluate the run's model/ on every target; write out_dir/transfer.json and out_dir/transfer/*.jsonl.
    Targets evaluated before stay in transfer.json. With `reuse`, a target already there with the same data,
    split and mapping is not evaluated again (a resumed sweep). `on_target(name, entry, cached)` reports."""
    cfg = stored_config(run)
    labels = get_task(cfg.task).label_names
    doc_path = out_dir / "transfer.json"
    doc = read_json(doc_path) or {}
    results = read_json(run.results) or {}
    doc.update({"run_dir": str(run.path), "source": source, "task": cfg.task, "source_labels": list(labels),
                "model": cfg.model.name, "method": cfg.method.name, "seed": cfg.train.seed,
                "in_domain": results.get("metrics", {})})
    entries = dict(doc.get("targets") or {})

    def evaluated_before(target: TargetData) -> bool:
        old = entries.get(target.name)
        return bool(reuse and old and (out_dir / old.get("predictions", "-")).is_file() and
                    (old.get("data"), old.get("split"), old.get("label_map")) ==
                    (target.origin, target.split, mappings[target.name]))

    todo = {t.name: t.dataset for t in targets if not evaluated_before(t)}
    source_model = None
    if todo:  # the model is loaded only when something needs evaluating
        source_model = SourceModel(run, cfg, todo)
        source_model.build(need_train=False)
    for target in targets:
        if target.name not in todo:
            if on_target:
                on_target(target.name, entries[target.name], True)
            continue
        t0 = time.time()
        idxs, probs = source_model.probabilities(target.name)
        summary, rows = score(target, labels, mappings[target.name], probs, idxs)
        rel = Path("transfer") / f"{target.name}.jsonl"
        atomic_write_text(out_dir / rel, "".join(json.dumps(r) + "\n" for r in rows))
        summary.update(predictions=str(rel), seconds=round(time.time() - t0, 3),
                       evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        entries[target.name] = summary
        if on_target:
            on_target(target.name, summary, False)
    doc["targets"] = entries
    doc["metrics"] = flat_metrics(entries)
    atomic_write_json(doc_path, doc)
    return doc


def flat_metrics(entries: dict[str, dict]) -> dict[str, float]:
    """{"rte/accuracy": ...}: the shape sweeps aggregate (mean ± std over seeds)."""
    return {f"{name}/accuracy": e["accuracy"] for name, e in entries.items()}
