"""End-to-end runs of `sftune train` / `sftune eval` on tiny config-built models and the real GLUE files."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAMILIES

FAST = ("--max-steps", "4", "--batch-size", "8", "--set", "data.train_size=48", "--set", "train.log_every=2",
        "--set", "data.eval_batch_size=128")


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_train_on_real_rte_writes_the_run_directory(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, *FAST, "-o", out)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["steps"] == 4
    assert 0.0 <= results["metrics"]["validation"]["accuracy"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 42
    assert {"torch", "transformers", "accelerate"} <= set(manifest["packages"])
    assert manifest["data"][0]["md5"] and manifest["n_train"] == 48
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [2, 4]
    assert records[-1]["type"] == "eval" and "validation/accuracy" in records[-1]
    preds = (out / "predictions" / "validation.jsonl").read_text().splitlines()
    assert len(preds) == 277 and json.loads(preds[0])["label"] in ("entailment", "not_entailment")
    assert (out / "model" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    assert "[train] step=2" in stdout  # plain lines when stdout is not a terminal


def test_json_format_prints_one_document(cli, tiny_roberta, glue_dir, tmp_path):
    code, stdout, _ = cli("train", tiny_roberta, "stsb", "--data-dir", glue_dir, *FAST, "-o", tmp_path / "r",
                          "--format", "json")
    assert code == 0
    doc = json.loads(stdout)
    assert set(doc["metrics"]["validation"]) == {"pearson", "spearman"}
    assert doc["main_metric"]["name"] == "spearman"


def test_dry_run_prints_groups_and_writes_nothing(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "dry"
    code, stdout, _ = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "bitfit", "--dry-run",
                          "-o", out)
    assert code == 0
    for group in ("embeddings", "attention", "ffn", "layernorm", "bias", "head"):
        assert group in stdout
    assert not out.exists()


@pytest.mark.parametrize("method", ["bitfit", "frozen"])
def test_only_the_methods_entries_change(cli, tiny_bert, glue_dir, tmp_path, method):
    out = tmp_path / method
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", method, *FAST, "-o", out,
                          "--set", "train.lr=1e-3")
    assert code == 0, stderr
    before, after = weights(tiny_bert), weights(out / "model")
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    head = {k for k in before if k.startswith("classifier.")}  # the task head always trains
    allowed = head | ({k for k in before if k.endswith("bias")} if method == "bitfit" else set())
    assert changed <= allowed, changed - allowed
    assert head <= changed
    if method == "bitfit":
        assert len(changed) > 10  # the biases really trained
    results = json.loads((out / "results.json").read_text())
    share = results["trainable"]["all"]["trainable"] / results["trainable"]["all"]["total"]
    assert 0 < share < 0.2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["full", "frozen", "bitfit"])
def test_every_family_trains(cli, tiny_models, glue_dir, tmp_path, family, method):
    code, _, stderr = cli("train", tiny_models[family], "rte", "--data-dir", glue_dir, "--method", method,
                          "--max-steps", "2", "--batch-size", "4", "--set", "data.train_size=16",
                          "--set", "data.eval_batch_size=128", "-o", tmp_path / "r", "--format", "json")
    assert code == 0, stderr


def test_eval_of_a_run_reproduces_its_metrics(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "run"
    assert cli("train", tiny_bert, "rte", "--data-dir", glue_dir, *FAST, "-o", out)[0] == 0
    code, stdout, _ = cli("eval", out, "rte", "--format", "json")
    assert code == 0
    doc = json.loads(stdout)
    trained = json.loads((out / "results.json").read_text())["metrics"]
    assert doc["metrics"] == trained
    assert (out / "eval-rte" / "predictions" / "validation.jsonl").is_file()


@pytest.mark.parametrize("schedule", ["train.eval_every=2", "train.save_every=1"])
def test_interrupted_run_resumes_to_the_same_weights(cli, tiny_bert, glue_dir, tmp_path, monkeypatch, schedule):
    """With evaluations between steps, and with checkpoints only (no evaluation draws between them)."""
    from sftune.engine import loop

    args = ("train", tiny_bert, "rte", "--data-dir", glue_dir, "--max-steps", "6", "--batch-size", "8",
            "--set", "data.train_size=24", "--set", schedule, "--set", "data.eval_batch_size=128")
    straight = tmp_path / "straight"
    assert cli(*args, "-o", straight)[0] == 0

    original = loop.Trainer._after_optimizer_step

    def stop_at_four(self, window):
        original(self, window)
        if self.state.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", stop_at_four)
    resumed = tmp_path / "resumed"
    code, _, stderr = cli(*args, "-o", resumed)
    assert code == 130 and "--resume" in stderr
    assert json.loads((resumed / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = cli(*args, "-o", resumed, "--resume")
    assert code == 0, stderr
    a, b = weights(straight / "model"), weights(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((straight / "results.json").read_text())
    rb = json.loads((resumed / "results.json").read_text())
    assert ra["metrics"] == rb["metrics"]
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == sorted(set(steps))  # no step recorded twice after the resume
    # A finished run resumed again only reports its results.
    assert cli(*args, "-o", resumed, "--resume")[0] == 0
