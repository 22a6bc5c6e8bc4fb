"""--report-to: records and the config reach the trackers through accelerate; read back from TensorBoard's files."""

import json

import pytest


def test_tensorboard_event_file_holds_the_runs_records(cli, tiny_bert, glue_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "bitfit", "--max-steps", "4",
                          "--batch-size", "8", "--set", "data.train_size=24", "--set", "train.log_every=2",
                          "--set", "data.eval_batch_size=128", "--report-to", "tensorboard", "-o", out)
    assert code == 0, stderr
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in train] == [2, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/selected")] == pytest.approx([r["selected"] for r in train], rel=1e-6)
    final = [r for r in records if r["type"] == "eval"][-1]
    assert acc.Scalars("validation/accuracy")[-1].value == pytest.approx(final["validation/accuracy"], rel=1e-6)


def test_unknown_or_missing_trackers_are_one_line_errors(cli, tiny_bert, glue_dir, tmp_path, monkeypatch):
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--report-to", "tensorbored",
                          "-o", tmp_path / "r")
    assert code == 2 and "--report-to 'tensorbored'" in stderr and "tensorboard, wandb" in stderr
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--report-to", "tensorboard,wandb",
                          "-o", tmp_path / "r")
    assert code == 2 and "pip install wandb" in stderr and not (tmp_path / "r").exists()


def test_values_and_hyperparameters():
    from sftune.trackers import hyperparameters, values_of

    assert values_of({"type": "train", "step": 3, "loss": 0.5, "selected/ffn": 0.1, "epoch": 1.0}) == {
        "train/loss": 0.5, "train/selected/ffn": 0.1, "train/epoch": 1.0}
    assert values_of({"type": "eval", "step": 3, "validation/f1": 0.8}) == {"validation/f1": 0.8}
    assert hyperparameters({"train": {"lr": 1e-5, "regs": [1, 2]}, "task": "rte", "preset": None}) == {
        "train.lr": 1e-5, "train.regs": "[1, 2]", "task": "rte", "preset": None}
