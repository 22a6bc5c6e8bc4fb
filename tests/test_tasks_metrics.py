import math

import pytest
from sklearn.metrics import f1_score

from sftune.errors import UsageError
from sftune.metrics import compute
from sftune.tasks import TASKS, get_task


def test_the_eight_glue_tasks_sick_and_the_lm_tasks():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "sick", "sick-r", "gsm8k",
                          "instruct"}
    assert {n for n, t in TASKS.items() if t.is_causal_lm} == {"gsm8k", "instruct"}
    assert get_task("sick").eval_splits == ("validation", "test") and get_task("sick").num_labels == 3
    assert get_task("sick-r").is_regression and get_task("sick-e").name == "sick"
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mrpc").metrics == ("f1", "accuracy") and get_task("qqp").main_metric == "f1"
    assert get_task("cola").main_metric == "matthews"
    assert get_task("SST-2").name == "sst2"


def test_unknown_task_suggests():
    with pytest.raises(UsageError, match="Did you mean 'mrpc'"):
        get_task("mprc")


def test_metrics_against_hand_computed_values():
    pred, gold = [1, 0, 1, 1], [1, 0, 0, 1]
    m = compute(("accuracy", "f1", "matthews"), pred, gold)
    assert m["accuracy"] == 0.75
    assert math.isclose(m["f1"], 0.8)  # precision 2/3, recall 1
    assert math.isclose(m["f1"], f1_score(gold, pred))
    # MCC = (TP*TN - FP*FN) / sqrt(...) = (2*1 - 1*0) / sqrt(3*2*1*2)
    assert math.isclose(m["matthews"], 2 / math.sqrt(12))
    c = compute(("pearson", "spearman"), [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0])
    assert c["spearman"] == pytest.approx(1.0) and 0.9 < c["pearson"] < 1.0
    assert compute(("pearson",), [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"] == 0.0
