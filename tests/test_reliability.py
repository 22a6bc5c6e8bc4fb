"""A run never lies and never destroys (docs/reliability.md): divergence, invalid hyperparameters, --overwrite,
eval across label sets, failed writes, remote code, crash safety and encodings. Tiny models, a few steps each."""

import json
import os
import shlex
import signal

import pytest

from sftune.artifacts import RunDir, to_json

QUICK = ("--batch-size", "8", "--set", "data.train_size=24", "--set", "data.eval_batch_size=128",
         "--set", "train.log_every=1")


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def strict_jsonl(path):
    """Every line parses as standard JSON (no NaN/Infinity tokens)."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def train(cli, tiny_bert, glue_dir):
    def run(out, *args, steps="4"):
        return cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--max-steps", steps, *QUICK, *args, "-o", out)
    return run


# ------------------------------------------------------------------------------------------------ divergence
@pytest.mark.parametrize("method", ["full", "top"])
def test_huge_learning_rate_stops_as_diverged(train, tmp_path, method):
    out = tmp_path / method
    code, _, stderr = train(out, "--lr", "1e10", "--method", method, steps="8")
    assert code == 3, stderr
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and "diverged at step" in line and "lower learning rate" in line
    m = manifest(out)
    assert m["status"] == "diverged" and m["diverged"]["step"] >= 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["metrics"] == {}
    assert results["diverged"]["step"] == m["diverged"]["step"]
    assert not (out / "model").exists() and not (out / "predictions").exists()  # nothing from NaN weights
    records = strict_jsonl(out / "metrics.jsonl")
    assert all(r["type"] == "train" for r in records)  # no evaluation of the diverged model
    assert RunDir(out).is_complete() is False
    code, _, stderr = train(out, "--lr", "1e10", "--method", method, "--resume", steps="8")
    assert code == 2 and "resuming would diverge again" in one_line(stderr)


def _nan_grad_norm_at(monkeypatch, bad_step: int):
    from sftune.engine import guard

    calls = {"n": 0}
    original = guard.grad_norm

    def fake(params):
        calls["n"] += 1
        return float("nan") if calls["n"] == bad_step else original(params)

    monkeypatch.setattr(guard, "grad_norm", fake)


def test_nonfinite_gradient_stops_at_that_step(train, tmp_path, monkeypatch):
    _nan_grad_norm_at(monkeypatch, 2)
    out = tmp_path / "r"
    code, _, stderr = train(out)
    assert code == 3 and "step 2: the gradient norm is nan" in stderr
    assert manifest(out)["diverged"] == {"step": 2, "what": "the gradient norm", "value": "nan"}


def test_skip_mode_drops_the_step_and_finishes(train, tmp_path, monkeypatch):
    """A 2-step run whose step 2 is skipped ends with the weights of a 1-step run (constant schedule)."""
    from safetensors.torch import load_file

    flat = ("--set", "train.scheduler=constant", "--set", "train.warmup_ratio=0")
    assert train(tmp_path / "one", *flat, steps="1")[0] == 0
    _nan_grad_norm_at(monkeypatch, 2)
    out = tmp_path / "r"
    code, _, stderr = train(out, "--set", "train.nonfinite=skip", *flat, steps="2")
    assert code == 0, stderr
    records = [r for r in strict_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 1]
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    a, b = load_file(str(tmp_path / "one/model/model.safetensors")), load_file(str(out / "model/model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_nonfinite_weight_is_caught_before_evaluation():
    import torch

    from sftune.engine.guard import Diverged, NonFiniteGuard

    model = torch.nn.Linear(2, 2)
    NonFiniteGuard.check_weights(3, model)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(Diverged, match="step 3: weight bias is inf"):
        NonFiniteGuard.check_weights(3, model)
    with pytest.raises(Diverged, match="output on validation is nan"):
        NonFiniteGuard.check_outputs(3, "validation", torch.tensor([[0.1, float("nan")]]))


def test_metrics_json_writes_nonfinite_as_null():
    text = to_json({"loss": float("nan"), "lr": float("inf"), "x": [1.0, float("-inf")], "ok": 0.5})
    assert json.loads(text) == {"loss": None, "lr": None, "x": [1.0, None], "ok": 0.5}


@pytest.mark.parametrize("args,fragment", [
    (("--lr", "-1"), "train.lr must be at least 0"),
    (("--set", "train.lr=nan"), "train.lr: expected a finite number, got 'nan'"),
    (("--set", "train.lr=inf"), "train.lr: expected a finite number"),
    (("--batch-size", "0"), "batch_size must be at least 1"),
    (("--set", "train.adam_beta2=1"), "train.adam_beta2 must be in [0, 1)"),
    (("--set", "train.warmup_ratio=2"), "train.warmup_ratio must be in [0, 1]"),
    (("--set", "train.nonfinite=ignore"), "train.nonfinite: expected one of stop, skip"),
])
def test_invalid_hyperparameters_are_refused_when_the_config_is_built(cli, tiny_bert, tmp_path, args, fragment):
    code, _, stderr = cli("train", tiny_bert, "rte", *args, "-o", tmp_path / "r")
    assert code == 2 and fragment in one_line(stderr)
    assert not (tmp_path / "r").exists()


def _fake_result(root, rel, status, value=None):
    d = root / rel
    d.mkdir(parents=True)
    doc = {"status": status, "task": "rte", "method": "full", "seed": int(rel[-1])}
    if status == "complete":
        doc.update(metrics={"validation": {"accuracy": value}},
                   main_metric={"split": "validation", "name": "accuracy", "value": value})
    else:
        doc.update(metrics={}, diverged={"step": 5, "what": "the loss", "value": "nan"})
    (d / "results.json").write_text(json.dumps(doc))


def test_sweeps_and_analyze_count_diverged_runs_apart(cli, tmp_path):
    from sftune.sweep.runner import state_of

    _fake_result(tmp_path, "rte/full/lr=1e-5/seed-1", "complete", 0.6)
    _fake_result(tmp_path, "rte/full/lr=1e-5/seed-2", "complete", 0.7)
    _fake_result(tmp_path, "rte/full/lr=1e-5/seed-3", "diverged")
    assert state_of(RunDir(tmp_path / "rte/full/lr=1e-5/seed-3")) == "skip"  # a rerun does not retry it
    code, stdout, _ = cli("analyze", tmp_path, "--no-case-study", "--format", "json")
    assert code == 0
    doc = json.loads(stdout)["tasks"]["rte"]
    (config,) = doc["configs"]
    assert config["n_seeds"] == 2 and config["diverged"] == 1
    assert config["metrics"]["validation/accuracy"]["mean"] == pytest.approx(0.65)
    assert doc["counts"]["diverged"] == 1 and doc["diverged"][0]["cause"] == "diverged at step 5: the loss is nan"
    code, stdout, _ = cli("analyze", tmp_path, "--no-case-study")
    assert "2 (1 diverged)" in stdout and "diverged rte/full/lr=1e-5/seed-3" in stdout


# ------------------------------------------------------------------------------------------------ --overwrite
def test_overwrite_refuses_a_directory_sftune_did_not_write(train, tmp_path):
    out = tmp_path / "project"
    (out / ".git").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    code, _, stderr = train(out, "--overwrite")
    assert code == 2 and "was not written by sftune" in one_line(stderr)
    assert (out / "notes.txt").read_text() == "keep me" and (out / ".git").is_dir()


def test_overwrite_replaces_an_earlier_run_and_an_empty_directory(train, tmp_path):
    out = tmp_path / "run"
    assert train(out, steps="1")[0] == 0
    (out / "stale.txt").write_text("from the earlier run")
    code, _, stderr = train(out, "--overwrite", steps="2")
    assert code == 0, stderr
    assert not (out / "stale.txt").exists() and json.loads((out / "results.json").read_text())["steps"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty, "--overwrite", steps="1")[0] == 0


# -------------------------------------------------------------------------------------------- eval labels
@pytest.fixture(scope="module")
def rte_run(tmp_path_factory, tiny_bert, glue_dir):
    from typer.testing import CliRunner

    from sftune.cli import app

    out = tmp_path_factory.mktemp("rel") / "rte"
    result = CliRunner().invoke(app, ["train", str(tiny_bert), "rte", "--data-dir", str(glue_dir), "--max-steps", "2",
                                      *QUICK, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("task,theirs", [("stsb", "a regression score"), ("mnli", "entailment, neutral")])
def test_eval_on_a_task_with_other_labels_is_refused(cli, rte_run, glue_dir, task, theirs):
    code, _, stderr = cli("eval", rte_run, task, "--data-dir", glue_dir)
    line = one_line(stderr)
    assert code == 2 and "entailment, not_entailment" in line and theirs in line and "sftune transfer" in line


def test_eval_on_a_task_with_the_same_labels_runs(cli, rte_run, glue_dir, tmp_path):
    dev = tmp_path / "qnli.tsv"  # the first 40 real QNLI dev rows keep it quick
    dev.write_text("".join((glue_dir / "QNLI" / "dev.tsv").read_text().splitlines(keepends=True)[:41]))
    code, stdout, stderr = cli("eval", rte_run, "qnli", "--validation-file", dev, "--format", "json")
    assert code == 0, stderr
    assert 0 <= json.loads(stdout)["metrics"]["validation"]["accuracy"] <= 1


# ------------------------------------------------------------------------------------------------- writes
def test_full_disk_at_the_final_save(train, tmp_path, monkeypatch, cli):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)  # its own name for it
    out = tmp_path / "r"
    code, _, stderr = train(out, steps="2")
    line = one_line(stderr)
    assert code == 1 and "No space left on device" in line and str(out / "model.tmp") in line
    m = manifest(out)
    assert m["status"] == "failed" and "No space left on device" in m["reason"]
    assert not (out / "model.tmp").exists() and not (out / "model").exists() and not (out / "results.json").exists()
    code, _, stderr = cli("eval", out, "rte")
    assert code == 2 and "is not a complete run (status: failed)" in one_line(stderr)


def test_read_only_output_folder(train, tmp_path, monkeypatch):
    from sftune import artifacts

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(artifacts, "atomic_write_text", refuse)
    monkeypatch.setattr("sftune.run.atomic_write_text", refuse)
    out = tmp_path / "r"
    code, _, stderr = train(out, steps="1")
    line = one_line(stderr)
    assert code == 1 and "Permission denied" in line and str(out / "config.yaml") in line


def test_failed_checkpoint_leaves_no_temporary_directory(train, tmp_path, monkeypatch):
    import torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "r"
    code, _, stderr = train(out, "--set", "train.save_every=1")
    line = one_line(stderr)
    assert code == 1 and str(out / "checkpoint.tmp" / "state.pt") in line
    assert not (out / "checkpoint.tmp").exists() and manifest(out)["status"] == "failed"


def test_dev_full_write_is_one_line(train, monkeypatch, tmp_path):
    """A real ENOSPC from the kernel: metrics.jsonl is redirected to /dev/full."""
    from pathlib import Path

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    monkeypatch.setattr(RunDir, "metrics", property(lambda self: Path("/dev/full")))
    out = tmp_path / "r"
    code, _, stderr = train(out, steps="2")
    line = one_line(stderr)
    assert code == 1 and "/dev/full: No space left on device" in line
    assert manifest(out)["status"] == "failed"


# ----------------------------------------------------------------------------------------------- remote code
def test_remote_code_from_a_preset_or_set_is_refused(cli, tiny_bert, tmp_path):
    preset = tmp_path / "evil.yaml"
    preset.write_text("config:\n  model: {trust_remote_code: true}\n")
    code, _, stderr = cli("train", tiny_bert, "rte", "--preset", preset, "-o", tmp_path / "r")
    assert code == 2 and "preset evil sets model.trust_remote_code" in one_line(stderr)
    code, _, stderr = cli("train", tiny_bert, "rte", "--set", "model.trust_remote_code=yes", "-o", tmp_path / "r")
    assert code == 2 and "--set sets model.trust_remote_code" in one_line(stderr)
    assert "--trust-remote-code" in stderr


def test_remote_code_from_a_sweep_file_is_refused(cli, tiny_bert, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"model: {tiny_bert}\ntask: rte\nseeds: 1\nset:\n  model.trust_remote_code: true\n")
    code, _, stderr = cli("sweep", spec, "-o", tmp_path / "s")
    assert code == 2 and "sets model.trust_remote_code" in one_line(stderr)


def test_model_with_its_own_code_names_the_flag(cli, tmp_path, glue_dir):
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "customthing", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForSequenceClassification": "modeling_x.XModel"}}))
    code, _, stderr = cli("train", model, "rte", "--data-dir", glue_dir, "--dry-run")
    line = one_line(stderr)
    assert code == 2 and "needs its own Python code" in line and "--trust-remote-code" in line


def test_the_flag_warns_and_is_recorded(train, tmp_path):
    out = tmp_path / "r"
    code, _, stderr = train(out, "--trust-remote-code", steps="1")
    assert code == 0, stderr
    assert "warning: --trust-remote-code" in stderr
    assert manifest(out)["trust_remote_code"] is True


# ------------------------------------------------------------------------------------------------ crash safety
def _fail_at(monkeypatch, step: int, exc):
    from sftune.engine import loop

    original = loop.Trainer._after_optimizer_step

    def hook(self, window):
        original(self, window)
        if self.state.step == step:
            exc()

    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", hook)
    return original


def test_wall_time_checkpoint_survives_a_hard_crash_and_resumes(train, tmp_path, monkeypatch):
    from sftune.engine import loop

    def crash():
        raise SystemExit(137)  # like kill -9: no handler writes a checkpoint

    original = _fail_at(monkeypatch, 3, crash)
    default = tmp_path / "default"
    assert train(default, steps="5")[0] == 137
    assert not (default / "checkpoint").exists()  # 10 minutes did not pass: nothing to resume from
    out = tmp_path / "r"
    assert train(out, "--set", "train.save_minutes=0.00001", steps="5")[0] == 137
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3 and not (out / "checkpoint.tmp").exists()
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = train(out, "--set", "train.save_minutes=0.00001", "--resume", steps="5")
    assert code == 0, stderr
    assert manifest(out)["resumed_from_step"] == 3


def test_sigterm_is_handled_like_ctrl_c_and_prints_a_complete_resume_command(train, tmp_path, monkeypatch, cli):
    from sftune.engine import loop

    original = _fail_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "with space"
    code, _, stderr = train(out, steps="4")
    assert code == 130
    assert manifest(out)["status"] == "interrupted"
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    command = stderr.strip().splitlines()[-1].split("continue with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["sftune", "train"] and "..." not in argv
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = cli(*argv[1:])  # exactly what was printed: the stored config.yaml gives the rest
    assert code == 0, stderr
    assert manifest(out)["resumed_from_step"] == 2 and RunDir(out).is_complete()


def test_resume_alone_uses_the_stored_config_and_given_options_must_agree(train, tmp_path, monkeypatch, cli):
    from sftune.engine import loop

    original = _fail_at(monkeypatch, 1, lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "r"
    assert train(out, "--set", "train.save_every=1", steps="3")[0] == 130
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = cli("train", "--resume", "-o", out, "--lr", "1e-3")
    assert code == 2 and "differ from the stored run in train.lr" in one_line(stderr)
    code, _, stderr = cli("train", "--resume", "-o", out, "--max-steps", "3")  # agrees: accepted
    assert code == 0, stderr
    code, _, stderr = cli("train", "-o", out)
    assert code == 2 and "missing MODEL and TASK" in one_line(stderr)
    code, _, stderr = cli("train", "rte", "--resume", "-o", out)
    assert code == 2 and "give both MODEL and TASK, or neither" in one_line(stderr)


def test_resume_with_nothing_to_resume_says_it_starts_over(train, tmp_path, monkeypatch):
    from sftune.engine import loop

    empty = tmp_path / "new"
    code, _, stderr = train(empty, "--resume", steps="1")
    assert code == 0 and "nothing to resume" in stderr and "starting a new run" in stderr
    original = _fail_at(monkeypatch, 1, lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "early"
    assert train(out, "--set", "train.save_minutes=0", steps="3")[0] == 130  # interrupt checkpoint only
    (out / "checkpoint").rename(tmp_path / "gone")  # as if killed before any checkpoint
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = train(out, "--set", "train.save_minutes=0", "--resume", steps="3")
    assert code == 0 and "has no checkpoint yet" in stderr and "starting over from step 0" in stderr
    steps = [r["step"] for r in strict_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [1, 2, 3]


def test_a_second_writer_is_refused_naming_the_first(train, tmp_path):
    out = tmp_path / "r"
    lock = RunDir(out).lock()
    try:
        code, _, stderr = train(out, "--resume", steps="1")
        line = one_line(stderr)
        assert code == 2 and f"pid {os.getpid()}" in line and "another sftune process" in line
    finally:
        lock.release()
    assert train(out, steps="1")[0] == 0  # released: the directory is usable again
    assert not (out / ".sftune.lock").exists()


def test_lock_is_released_by_a_dead_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import sftune

    code = ("import sys; from sftune.artifacts import RunDir; RunDir(sys.argv[1]).lock(); import os; "
            "os.kill(os.getpid(), 9)")
    env = {**os.environ, "PYTHONPATH": str(Path(sftune.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env=env)
    RunDir(tmp_path / "r").lock().release()  # the kernel dropped the dead holder's lock


# ------------------------------------------------------------------------------------------------ encodings
def test_non_utf8_data_file_names_the_byte(cli, tiny_bert, tmp_path):
    f = tmp_path / "latin.tsv"
    f.write_bytes("sentence1\tsentence2\tlabel\n".encode() + "caf\u00e9\tb\tentailment\n".encode("latin-1"))
    code, _, stderr = cli("train", tiny_bert, "rte", "--train-file", f, "--validation-file", f, "-o", tmp_path / "r")
    line = one_line(stderr)
    assert code == 2 and str(f) in line and "byte 0xe9 at offset 29 (line 2)" in line and "UTF-8" in line


def test_a_checkpoint_holding_a_pickled_object_is_refused(train, tmp_path, monkeypatch):
    import torch

    from sftune.engine import loop

    original = _fail_at(monkeypatch, 1, lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "r"
    assert train(out, steps="2")[0] == 130
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    state = out / "checkpoint" / "state.pt"
    blob = torch.load(state, weights_only=True)
    blob["rng"]["evil"] = _Payload()
    torch.save(blob, state)
    code, _, stderr = train(out, "--resume", steps="2")
    assert code == 2 and "holds Python objects besides tensors" in one_line(stderr)
    assert not _Payload.ran


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload.run, ())

    @staticmethod
    def run():
        _Payload.ran = True


def test_every_case_in_docs_names_an_existing_test():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "reliability.md").read_text().split("## Every case", 1)[1]
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 40
    for row in rows:
        (ref,) = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row) or [None]
        assert ref, row
        path, name = ref
        assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), f"{path}::{name} does not exist"


FAKE_DIVERGING_TRAIN = """
import json, os, sys
path = sys.argv[1]
os.makedirs(path, exist_ok=True)
seed = int(path[-1])
if "lr=0.005" in path:
    json.dump({"status": "diverged", "method": "full", "seed": seed, "metrics": {},
               "diverged": {"step": 4, "what": "the loss", "value": "nan"}},
              open(os.path.join(path, "results.json"), "w"))
    sys.exit(3)
acc = 0.5 + seed / 10
json.dump({"status": "complete", "method": "full", "seed": seed, "metrics": {"validation": {"accuracy": acc}},
           "main_metric": {"split": "validation", "name": "accuracy", "value": acc}},
          open(os.path.join(path, "results.json"), "w"))
"""


def test_a_sweep_reports_diverged_runs_and_does_not_retry_them(cli, tmp_path, monkeypatch):
    import sys

    from sftune.sweep.runner import Runner

    monkeypatch.setattr(Runner, "command", lambda self, o, action: [sys.executable, "-c", FAKE_DIVERGING_TRAIN,
                                                                    str(self._dir(o).path), action])
    out = tmp_path / "s"
    args = ("sweep", "minilm", "rte", "--grid", "train.lr=0.001,0.005", "--seeds", "2", "-o", out)
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr  # diverging is a result of the configuration, not a crash
    assert "0 (2 diverged)" in stdout and "diverged rte/full/lr=0.005/seed-1: diverged at step 4" in stdout
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"]["diverged"] == 2 and doc["counts"]["failed"] == 0
    by = {c["config"]: c for c in doc["configs"]}
    assert by["lr=0.005"]["metrics"] == {} and by["lr=0.001"]["metrics"]["validation/accuracy"]["n"] == 2
    code, stdout, _ = cli(*args, "--format", "json")
    runs = json.loads(stdout)["runs"]
    assert code == 0 and {r["action"] for r in runs} == {"skip"}
    assert sorted(r["status"] for r in runs) == ["complete", "complete", "diverged", "diverged"]


def test_eval_of_a_model_with_nan_weights_computes_no_metric(cli, tiny_bert, glue_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bert.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(broken / "model.safetensors"))
    weights = {k: v.fill_(float("nan")) if k.startswith("classifier.") else v for k, v in weights.items()}
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code, _, stderr = cli("eval", broken, "rte", "--data-dir", glue_dir, "-o", tmp_path / "e")
    assert code == 2 and "output on validation is nan" in one_line(stderr)
    assert not (tmp_path / "e").exists()
