"""bench/loop_overhead.py: both sides read the same batches, and the step time and ratios are computed right."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return load_bench("loop_overhead.py")


def _cfg(bench, tiny_bert, glue_dir, steps: int):
    from sftune.config import build

    args = SimpleNamespace(model=str(tiny_bert), data_dir=str(glue_dir), train_size=36, max_length=64, seed=3,
                           batch_size=8, steps=steps, device="cpu")
    return build(bench.train_tree(args))


def test_the_trainer_reads_sftunes_batches_in_sftunes_order(tiny_bert, glue_dir, tmp_path):
    from sftune.engine.loop import Trainer

    bench = _bench()
    cfg = _cfg(bench, tiny_bert, glue_dir, steps=5)  # 36 examples at batch 8: one epoch, a short last batch
    ours = Trainer(cfg)
    ours.build()
    theirs = bench.make_hf_trainer(cfg, tmp_path, []).get_train_dataloader()
    a, b = list(ours.train_loader), list(theirs)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert x["input_ids"].shape == y["input_ids"].shape and (x["input_ids"] == y["input_ids"]).all()
        assert (x["labels"] == y["labels"]).all()


def test_steps_beyond_one_epoch_are_refused(tiny_bert, glue_dir):
    bench = _bench()
    with pytest.raises(SystemExit, match="at most one epoch"):
        bench.ordered_train_set(_cfg(bench, tiny_bert, glue_dir, steps=6))


def test_step_time_and_ratios():
    bench = _bench()
    marks = [10.0, 10.5, 11.0, 11.2, 11.4, 11.6]  # two slow warm-up steps, then 0.2 s per step
    assert bench.step_seconds(marks, skip=2) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        bench.step_seconds(marks[:3], skip=2)
    doc = bench.summary([{"sftune": 1.1, "trainer": 1.0}, {"sftune": 0.9, "trainer": 1.0},
                         {"sftune": 2.0, "trainer": 2.0}])
    assert doc["ratio_median"] == pytest.approx(1.0)
    assert (doc["ratio_min"], doc["ratio_max"]) == (pytest.approx(0.9), pytest.approx(1.1))
    assert doc["sftune_step_median"] == 1.1 and doc["trainer_step_median"] == 1.0
