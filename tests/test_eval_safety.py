"""`sftune eval` of a bare model says when the score is a random head's, and --trust-remote-code for eval and
transfer: only the typed flag runs a model repository's code, a run's recorded choice is never carried over
silently (docs/reliability.md, "Remote code" and "Bare models"). Tiny config-built models, RTE's dev set."""

import itertools
import json
import shutil

import pytest

from sftune.errors import UsageError


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def evaluate(cli, glue_dir, tmp_path):
    """`sftune eval MODEL TASK --format json`: its document (the same as metrics.json) and its stderr."""
    counter = itertools.count()

    def run(model, *args, task="rte"):
        out = tmp_path / f"eval-{next(counter)}"
        code, stdout, stderr = cli("eval", model, task, "--data-dir", glue_dir, "--format", "json", "-o", out, *args)
        assert code == 0, stderr
        doc = json.loads(stdout)
        assert json.loads((out / "metrics.json").read_text()) == doc
        return doc, stderr
    return run


# ------------------------------------------------------------------------------------------------ bare models
def test_eval_of_a_model_without_a_head_warns_that_the_head_is_random(evaluate, tiny_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    bare = tmp_path / "encoder"  # the pre-trained encoder alone, as a Hub checkpoint like bert-base ships
    AutoModel.from_pretrained(tiny_bert).save_pretrained(bare)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(bare)
    doc, stderr = evaluate(bare)
    line = one_line(stderr)
    assert f"warning: {bare} has no classification head for rte" in line
    assert "newly initialised, random head" in line and "sftune train" in line
    assert doc["head"] == "new" and "accuracy" in doc["metrics"]["validation"]


def test_eval_of_a_head_for_another_label_count_warns_too(evaluate, tiny_bert):
    # tiny_bert's head has 2 outputs; STS-B needs 1: transformers replaces it (ignore_mismatched_sizes).
    doc, stderr = evaluate(tiny_bert, task="stsb")
    assert "newly initialised, random head" in one_line(stderr) and doc["head"] == "new"


def test_eval_of_a_checkpoints_own_head_warns_only_when_its_labels_differ(evaluate, tiny_bert, tmp_path):
    own, stderr = evaluate(tiny_bert)  # a 2-way head with the generic names LABEL_0, LABEL_1: nothing to say
    assert "warning" not in stderr and own["head"] == "checkpoint"
    sentiment = tmp_path / "sentiment"  # the same head, named by a model fine-tuned on SST-2
    shutil.copytree(tiny_bert, sentiment)
    config = json.loads((sentiment / "config.json").read_text())
    config.update(id2label={"0": "negative", "1": "positive"}, label2id={"negative": 0, "positive": 1})
    (sentiment / "config.json").write_text(json.dumps(config))
    doc, stderr = evaluate(sentiment)
    line = one_line(stderr)
    assert "trained for labels negative, positive" in line and "entailment, not_entailment" in line
    assert doc["head"] == "checkpoint" and doc["head_labels"] == ["negative", "positive"]
    assert doc["metrics"] == own["metrics"]  # the same weights, read by position


def test_eval_of_a_run_directory_records_the_runs_head(evaluate, cli, tiny_bert, glue_dir, tmp_path):
    run = tmp_path / "run"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--max-steps", "1", "--batch-size",
                          "8", "--set", "data.train_size=16", "-o", run)
    assert code == 0, stderr
    doc, stderr = evaluate(run)
    assert "warning" not in stderr and doc["head"] == "run" and doc["trust_remote_code"] is False


# ------------------------------------------------------------------------------------------------ remote code
@pytest.fixture
def stop_at_loader(monkeypatch):
    """Replaces the tokenizer loader (the first thing eval and transfer load) by one that records what it was told
    about trust_remote_code and stops the command there: nothing is loaded, nothing reaches for the network."""
    def install() -> list[bool]:
        seen = []

        def fake(name, trust_remote_code=False, revision=None):
            seen.append(trust_remote_code)
            raise UsageError("stopped at the loader")

        monkeypatch.setattr("sftune.engine.loop.load_tokenizer", fake)
        monkeypatch.setattr("sftune.transfer.source_model.load_tokenizer", fake)
        return seen
    return install


def test_eval_and_transfer_pass_the_flag_to_the_loader(cli, tiny_bert, glue_dir, tmp_path, stop_at_loader):
    loader_flags = stop_at_loader()
    code, _, stderr = cli("eval", tiny_bert, "rte", "--data-dir", glue_dir, "--trust-remote-code")
    assert code == 2 and "warning: --trust-remote-code: running the Python code that ships with" in stderr
    assert "recorded in metrics.json" in stderr
    code, _, stderr = cli("eval", tiny_bert, "rte", "--data-dir", glue_dir)
    assert code == 2 and "--trust-remote-code" not in stderr
    code, _, stderr = cli("transfer", tiny_bert, "--source", "mnli", "--targets", "rte", "--data-dir", glue_dir,
                          "--trust-remote-code", "-o", tmp_path / "t")
    assert code == 2 and "warning: --trust-remote-code" in stderr
    assert loader_flags == [True, False, True]


def test_a_model_with_its_own_code_names_the_flag_in_eval_and_transfer(cli, tmp_path, glue_dir):
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "customthing", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForSequenceClassification": "modeling_x.XModel"}}))
    code, _, stderr = cli("eval", model, "rte", "--data-dir", glue_dir)
    line = one_line(stderr)
    assert code == 2 and "needs its own Python code" in line and "add --trust-remote-code" in line
    code, _, stderr = cli("transfer", model, "--targets", "rte", "--data-dir", glue_dir, "-o", tmp_path / "t")
    line = one_line(stderr)
    assert code == 2 and "needs its own Python code" in line and "add --trust-remote-code" in line


def test_a_run_trained_with_the_flag_needs_it_again_to_eval_transfer_or_resume(cli, tiny_bert, glue_dir, tmp_path,
                                                                              stop_at_loader):
    run = tmp_path / "run"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--max-steps", "1", "--batch-size",
                          "8", "--set", "data.train_size=16", "--trust-remote-code", "-o", run)
    assert code == 0, stderr
    for command in (["eval", run, "rte"], ["transfer", run, "--targets", "rte"], ["train", "--resume", "-o", run]):
        code, _, stderr = cli(*command, "--data-dir", glue_dir)
        line = one_line(stderr)
        assert code == 2 and "was trained with --trust-remote-code" in line and "pass --trust-remote-code" in line
    code, _, stderr = cli("eval", run, "rte", "--set", "model.trust_remote_code=true")
    assert code == 2 and "--set sets model.trust_remote_code" in one_line(stderr)
    seen = stop_at_loader()
    for command in (["eval", run, "rte"], ["transfer", run, "--targets", "rte"]):
        code, _, stderr = cli(*command, "--data-dir", glue_dir, "--trust-remote-code")
        assert code == 2 and "warning: --trust-remote-code" in stderr
    assert seen == [True, True]
