"""Dev-set metrics of GLUE, computed with scikit-learn and scipy (no Hub download, unlike `evaluate`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _accuracy(pred, gold) -> float:
    return float(accuracy_score(gold, pred))


def _f1(pred, gold) -> float:
    # GLUE's F1 is binary F1 of the positive class (label 1: paraphrase / duplicate).
    return float(f1_score(gold, pred, average="binary", pos_label=1, zero_division=0.0))


def _matthews(pred, gold) -> float:
    return float(matthews_corrcoef(gold, pred))


def _correlation(fn) -> Callable[[Sequence[float], Sequence[float]], float]:
    def metric(pred, gold) -> float:
        pred, gold = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
        # A constant prediction has no defined correlation; report 0 rather than NaN so tables stay numeric.
        if len(pred) < 2 or np.all(pred == pred[0]) or np.all(gold == gold[0]):
            return 0.0
        value = float(fn(pred, gold)[0])
        return 0.0 if math.isnan(value) else value

    return metric


METRICS: dict[str, Callable] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews": _matthews,
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """Compute each named metric of `predictions` (class ids, or floats for regression) against `labels`."""
    return {name: METRICS[name](predictions, labels) for name in names}
