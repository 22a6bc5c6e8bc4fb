"""Every method and regulariser runs on tiny decoders (Llama with RMSNorm and no biases; GPT-2 with Conv1D and
biases), in both mask modes, for the causal-LM objective (GSM8K rows) and for sequence classification (RTE)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sftune.registry import methods

# Methods that cannot run on a model/objective, and the error they must give instead.
EXPECTED_ERRORS = {("bitfit", "llama"): "has no bias parameters", ("frozen", "lm"): "trains only the task head"}
MASKED = {"child-tuning-d", "child-tuning-f", "dps-dense", "dps-mix", "random", "stochastic", "top"}


def _train(cli, model, task, data, out, *extra):
    return cli("train", model, task, "--data-dir", data, "--max-steps", "2", "--batch-size", "4",
               "--set", "data.train_size=8", "--set", "data.eval_size=4", "--set", "data.max_new_tokens=4",
               "--set", "train.log_every=1", "--set", "train.lr=1e-2", "--set", "data.eval_batch_size=64",
               *(("--set", "method.fisher_batches=2") if "child-tuning-d" in extra else ()),
               *(("--set", "method.merge=true") if {"lora", "dora"} & set(extra) else ()),  # model/ to compare
               "-o", out, *extra)


def _changed(before_dir, out) -> set[str]:
    before = load_file(str(before_dir / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("mode", ["grad", "update"])
@pytest.mark.parametrize("method", sorted(methods()))
def test_every_method_trains_a_tiny_llama_lm_on_gsm8k(cli, tiny_lms, gsm8k_small, tmp_path, method, mode):
    if mode == "update" and method not in MASKED:
        pytest.skip("update mode only differs for masked methods")
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms["llama"], "gsm8k", gsm8k_small, out, "--method", method,
                             "--set", f"method.mask_mode={mode}")
    for (m, where), message in EXPECTED_ERRORS.items():
        if m == method and where in ("llama", "lm"):
            assert code == 2 and message in stderr
            return
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]["test"]) == {"loss", "perplexity", "exact_match"}
    assert _changed(tiny_lms["llama"], out), "training changed nothing"
    # The sparsity report sorts Llama's modules into the structural groups (nothing left in "other").
    assert set(results["sparsity"]["groups"]) == {"embeddings", "attention", "ffn", "layernorm"}
    assert results["trainable"]["other"]["total"] == 0 and results["trainable"]["bias"]["total"] == 0
    if method in ("random", "stochastic", "top"):
        rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][0]
        assert rec["budget_k"] == round(0.0008 * sum(v["total"] for g, v in results["trainable"].items()
                                                     if g in ("attention", "ffn", "layernorm")))


@pytest.mark.parametrize("method", sorted(methods()))
def test_every_method_trains_a_tiny_gpt2_classifier(cli, tiny_lms, glue_dir, tmp_path, method):
    """GPT-2 (Conv1D projections, biases): a classifier built on the causal-LM checkpoint, padded with EOS."""
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms["gpt2"], "rte", glue_dir, out, "--method", method)
    assert code == 0, stderr
    changed = _changed(tiny_lms["gpt2"], out)
    if method not in ("frozen",):
        assert any(k.startswith("transformer.h.") for k in changed), changed


@pytest.mark.parametrize("reg", ["mixout:p=0.3", "r3f:lambda=1", "r-drop:alpha=1", "reinit:L=1", "llrd:eta=0.9"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_regularisers_on_the_lm_loss(cli, tiny_lms, gsm8k_small, tmp_path, reg, family):
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms[family], "gsm8k", gsm8k_small, out, "--method", "stochastic", "--reg", reg)
    assert code == 0, stderr
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["type"] == "train"]
    assert len(train) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    name = reg.split(":")[0]
    if name in ("r3f", "r-drop"):
        assert all(r[f"{name}/kl"] >= 0 for r in train)
    if name == "mixout":
        assert 0 < train[0]["mixout/kept"] < 1


def test_eval_of_a_causal_lm_run_generates_and_scores(cli, tiny_lms, gsm8k_small, tmp_path, monkeypatch):
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms["llama"], "gsm8k", gsm8k_small, out, "--method", "full")
    assert code == 0, stderr
    code, stdout, stderr = cli("eval", out, "gsm8k", "--set", "data.eval_size=3", "--format", "json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert set(doc["metrics"]["test"]) == {"loss", "perplexity", "exact_match"}
    rows = [json.loads(x) for x in (out / "eval-gsm8k" / "predictions" / "test.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in rows] == [0, 1, 2]
    assert all(set(r) == {"idx", "label", "prediction", "correct", "generated"} for r in rows)
    assert rows[0]["label"] == "18"  # the first GSM8K test answer's number after ####
    code, stdout, stderr = cli("eval", out, "gsm8k", "--set", "data.eval_size=3", "--set", "data.max_new_tokens=0",
                               "--format", "json", "-o", tmp_path / "loss-only")
    assert code == 0, stderr
    assert set(json.loads(stdout)["metrics"]["test"]) == {"loss", "perplexity"}  # 0 new tokens: no generation
    assert json.loads(stdout)["metrics"]["test"]["loss"] == doc["metrics"]["test"]["loss"]
    # Evaluation forwards slices of rows small enough for causal_lm.LOGITS_BUDGET: one row at a time here, the
    # same loss as the whole batch of 64 at once.
    import sftune.causal_lm

    seen, chunks = [], sftune.causal_lm.row_chunks

    def recorded(batch, vocab):
        for part in chunks(batch, vocab):
            seen.append(part)
            yield part

    monkeypatch.setattr(sftune.causal_lm, "LOGITS_BUDGET", 1)  # less than one row's logits: one row per slice
    monkeypatch.setattr(sftune.causal_lm, "row_chunks", recorded)
    code, stdout, stderr = cli("eval", out, "gsm8k", "--set", "data.eval_size=3", "--set", "data.max_new_tokens=0",
                               "--format", "json", "-o", tmp_path / "one-row")
    assert code == 0, stderr
    assert len(seen) == 3 and all(len(part["input_ids"]) == 1 for part in seen)
    assert json.loads(stdout)["metrics"]["test"]["loss"] == pytest.approx(doc["metrics"]["test"]["loss"], rel=1e-5)


def test_eval_of_a_lora_run_without_merged_weights_loads_its_adapter(cli, tiny_lms, gsm8k_small, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = cli("train", tiny_lms["llama"], "gsm8k", "--data-dir", gsm8k_small, "--method", "lora",
                          "--max-steps", "2", "--batch-size", "4", "--set", "data.train_size=8",
                          "--set", "data.eval_size=4", "--set", "data.max_new_tokens=0", "--set", "train.lr=1e-2",
                          "-o", out)
    assert code == 0, stderr
    assert (out / "adapter").is_dir() and not (out / "model").exists()
    # data.max_new_tokens=0 in training: loss only, so no exact match to report as the main metric
    assert json.loads((out / "results.json").read_text())["main_metric"]["value"] is None
    code, stdout, stderr = cli("eval", out, "gsm8k", "--set", "data.eval_size=4", "--set", "data.max_new_tokens=0",
                               "--format", "json")
    assert code == 0, stderr
    trained = json.loads((out / "results.json").read_text())["metrics"]["test"]["loss"]
    assert json.loads(stdout)["metrics"]["test"]["loss"] == pytest.approx(trained, rel=1e-5)


def test_the_held_out_split_of_a_causal_lm_run_gets_the_loss_only(cli, tiny_lms, gsm8k_small, tmp_path):
    """Generation is the costly part of an evaluation: the split carved from the training data is scored by
    loss and perplexity (what model selection reads), the test split is also generated and scored."""
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms["llama"], "gsm8k", gsm8k_small, out, "--method", "full",
                             "--set", "data.validation_from_train=6")
    assert code == 0, stderr
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert set(metrics["heldout"]) == {"loss", "perplexity"}
    assert set(metrics["test"]) == {"loss", "perplexity", "exact_match"}


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb"])
def test_llama_classifier_on_the_other_glue_tasks(cli, tiny_lms, glue_dir, tmp_path, task):
    """A bias-free Llama with the decoder classification head (regression for STS-B) on each GLUE task with
    real files here (RTE: the GPT-2 test above)."""
    out = tmp_path / "run"
    code, _, stderr = _train(cli, tiny_lms["llama"], task, glue_dir, out, "--method", "stochastic")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["trainable"]["head"]["total"] == 32 * (1 if task == "stsb" else 2)  # score: hidden x labels
    assert results["main_metric"]["value"] == results["main_metric"]["value"]  # not NaN
