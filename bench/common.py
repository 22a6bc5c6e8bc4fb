"""What the resumable benchmark runners (bench/quality/run.py and staged.py, bench/llm/run.py) share: the
profile, the committed records, the run environment, the report's machine line and the docs block it fills.

A runner puts this folder on sys.path (`sys.path.insert(0, str(Path(__file__).resolve().parents[1]))` from a
script one folder down) and imports `common`; this works both as `python bench/x/run.py` from the repository
root and under the tests' load_bench.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from sftune.artifacts import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def read_profile(folder: Path, name: str, choices: str) -> tuple[Path, dict]:
    """A profile by name (FOLDER/NAME.yaml) or as a YAML path, and its contents; `choices` lists the named
    ones for the error."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        sys.exit(f"error: profile {name!r} not found (expected {path}); profiles: {choices}, or a YAML path")
    return path, yaml.safe_load(path.read_text())


# ------------------------------------------------------------------------------------------------ records
def append_record(path: Path, record: dict) -> None:
    """One finished run's record, one line of the committed JSON-lines file (keys sorted: stable diffs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def train_loss(metrics: Path) -> dict:
    """The training loss at the first logged step and averaged over the last three, from a run's
    metrics.jsonl: whether a run left the initial plateau (ln 2 = 0.69 for two classes) is measured, not
    guessed."""
    losses = [r["loss"] for r in read_jsonl(metrics) if r.get("type") == "train" and r.get("loss") is not None]
    if not losses:
        return {}
    return {"loss_first": round(losses[0], 4), "loss_last": round(sum(losses[-3:]) / len(losses[-3:]), 4)}


def prediction_ranking(predictions: Path, label_names: tuple[str, ...]) -> dict | None:
    """What a classifier's predictions (a run's predictions/SPLIT.jsonl) say beyond the label they pick.

    `auc`: ROC AUC of the predicted probabilities against the gold labels (threshold-free; 0.5 = no signal;
    more than two labels: one-vs-rest, macro). `top_label`, `top_share`: the label predicted most often and
    the share of examples given it; `top_p`: that label's lowest and highest predicted probability. A run at
    the majority class with an AUC near 0.5 learnt nothing beyond the label prior; one with a clearly higher
    AUC ranks the examples, but its probabilities never cross the decision threshold. None for regression,
    a missing file or a split with a single gold label (AUC undefined)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    if not label_names or not predictions.is_file():
        return None
    rows = read_jsonl(predictions)
    gold = np.array([label_names.index(r["label"]) for r in rows])
    probs = np.array([r["probabilities"] for r in rows], dtype=float)
    if len(set(gold.tolist())) < 2:
        return None
    if len(label_names) == 2:
        auc = roc_auc_score(gold == 1, probs[:, 1])
    else:
        auc = roc_auc_score(gold, probs / probs.sum(1, keepdims=True), multi_class="ovr",
                            labels=list(range(len(label_names))))
    picked = probs.argmax(1)
    top = int(np.bincount(picked, minlength=len(label_names)).argmax())
    return {"auc": round(float(auc), 4), "top_label": label_names[top],
            "top_share": round(float((picked == top).mean()), 4),
            "top_p": [round(float(probs[:, top].min()), 4), round(float(probs[:, top].max()), 4)]}


# ------------------------------------------------------------------------------------------------ running
def env_for_runs(threads: int) -> None:
    """One thread per run whatever --jobs is (CPU results depend on the thread count), offline Hub."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def short_commit() -> str:
    """This checkout's commit, short ('' outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


# ------------------------------------------------------------------------------------------------- report
def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def write_block(path: Path, key: str, block: str) -> None:
    """Replace the block between `<!-- quality:KEY:start -->` and `<!-- quality:KEY:end -->` in a Markdown
    file (append it when missing), so the hand-written text around it stays."""
    start, end = f"<!-- quality:{key}:start -->", f"<!-- quality:{key}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    new = f"{start}\n{block}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + new + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    atomic_write_text(path, text)
