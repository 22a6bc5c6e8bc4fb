"""`sftune sweep`: grid expansion and run names, up-front validation, the runner (skip/resume/overwrite,
failures, Ctrl-C, --jobs environments), statistics, and a real sweep killed with SIGKILL and run again."""

from __future__ import annotations

import _thread
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sftune.artifacts import RunDir, read_jsonl
from sftune.config import dump_yaml, option
from sftune.errors import UsageError
from sftune.methods.base import Method, Regularizer
from sftune.sweep import runner as runner_mod
from sftune.sweep.plan import expand
from sftune.sweep.runner import RunLock, Runner, child_env, cpu_cores, failure_cause, state_of
from sftune.sweep.spec import grid_presets, load_grid_preset, make_spec
from sftune.sweep.summary import Record, mean_std, summarize

ROOT = Path(__file__).resolve().parents[1]


def spec(**cli):
    return make_spec({"model": "minilm", "task": "rte", **cli})


def rels(runs):
    return [str(r.rel) for r in runs]


def one_line_error(result, *fragments):
    code, stdout, stderr = result
    assert code == 2, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@dataclass
class _POptions:
    p: float = option(0.5, "share of entries")


class _FakeP(Method):
    name = "fake-p"
    summary = "test method with an option p"
    Options = _POptions


@pytest.fixture
def fake_p(monkeypatch):
    from sftune import registry

    registry.methods()
    monkeypatch.setitem(registry._METHODS, "fake-p", _FakeP)


# ------------------------------------------------------------------------------------------ grids and names
def test_grid_product_names_and_train_arguments():
    runs = expand(spec(method=["full,bitfit"], grid=["train.lr=2e-5,0.00003"], seeds=2,
                       set=["train.max_steps=5"], data_dir="GLUE", train_size=32, stratified=True))
    assert rels(runs) == [f"rte/{m}/lr={lr}/seed-{s}" for m in ("full", "bitfit") for lr in ("2e-05", "3e-05")
                          for s in (1, 2)]
    run = runs[2]
    assert (run.method, run.seed, run.labels) == ("full", 1, {"lr": "3e-05"})
    assert run.config["train"]["lr"] == 3e-5 and run.config["train"]["seed"] == 1
    assert run.config["train"]["max_steps"] == 5
    assert run.config["data"]["train_size"] == 32 and run.config["data"]["stratified"] is True
    assert run.args == ["minilm", "rte", "--method", "full", "--data-dir", "GLUE", "--train-size", "32",
                        "--stratified", "--set", "train.max_steps=5", "--set", "train.lr=0.00003", "--seed", "1"]


def test_same_value_written_twice_is_one_run_and_an_error():
    with pytest.raises(UsageError, match="same run"):
        expand(spec(grid=["train.lr=1e-3,0.001"], seeds=1))


def test_method_options_apply_only_to_methods_that_have_them(fake_p):
    runs = expand(spec(method=["full", "fake-p"], grid=["method.p=0.1,0.3", "train.lr=1e-4"], seeds=1))
    assert rels(runs) == ["rte/full/lr=0.0001/seed-1", "rte/fake-p/p=0.1,lr=0.0001/seed-1",
                          "rte/fake-p/p=0.3,lr=0.0001/seed-1"]
    assert "--set" in runs[1].args and "method.p=0.1" in runs[1].args
    assert not any(a.startswith("method.p") for a in runs[0].args)
    assert runs[2].config["method"]["p"] == 0.3
    # --set method.p also goes only where it applies; a key no method has is an error with a suggestion.
    fixed = expand(spec(method=["full", "fake-p"], set=["method.p=0.2"], seeds=1))
    assert "method" not in {k.split(".")[0] for k in fixed[0].args if "=" in k}
    assert fixed[1].config["method"]["p"] == 0.2
    with pytest.raises(UsageError, match="unknown key 'method.q'"):
        expand(spec(method=["full", "fake-p"], grid=["method.q=1,2"], seeds=1))


def test_paired_values_are_zipped_and_regulariser_keys_add_the_regulariser(fake_p, monkeypatch):
    from sftune import registry

    @dataclass
    class _ROptions:
        w: float = option(1.0, "weight")
        kind: str = option("a", "kind")

    class _FakeReg(Regularizer):
        name = "fake-reg"
        summary = "test regulariser"
        Options = _ROptions

    registry.regularizers()
    monkeypatch.setitem(registry._REGULARIZERS, "fake-reg", _FakeReg)
    runs = expand(spec(method=["fake-p"], paired=["method.p=0.1,0.2", "train.lr=1e-5,2e-5"],
                       grid=["reg.fake-reg.w=0.5", "reg.fake-reg.kind=b"], seeds=1))
    assert rels(runs) == ["rte/fake-p/fake-reg.w=0.5,fake-reg.kind=b,p=0.1,lr=1e-05/seed-1",
                          "rte/fake-p/fake-reg.w=0.5,fake-reg.kind=b,p=0.2,lr=2e-05/seed-1"]
    assert runs[0].config["regs"] == [{"name": "fake-reg", "w": 0.5, "kind": "b"}]
    assert runs[0].args[-4:] == ["--set", "train.lr=1e-5", "--seed", "1"]
    assert ["--reg", "fake-reg:w=0.5,kind=b"] == runs[0].args[4:6]
    with pytest.raises(UsageError, match="as many values"):
        spec(paired=["method.p=0.1,0.2", "train.lr=1e-5"])


def test_long_slugs_are_cut_with_a_hash():
    runs = expand(spec(grid=["train.warmup_ratio=0.123456789", "train.adam_eps=1.23456789e-08",
                             "train.weight_decay=0.0123456789", "train.adam_beta2=0.99912345"], seeds=1))
    slug = runs[0].slug
    assert len(slug) == 64 and slug.startswith("warmup_ratio=0.123456789,") and slug[-9] == "-"


def test_yaml_sweep_file_and_its_written_copy_give_the_same_runs(fake_p, tmp_path, cli):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "model: minilm\ntask: rte\nmethod: [full, fake-p]\n"
        "grid:\n  train.lr: [1.0e-5, 2e-5]\n"
        "paired:\n  method.p: [0.1, 0.3]\n  train.batch_size: [8, 16]\n"
        "seeds: 2\nset: {train.max_steps: 5}\noutput_dir: " + str(tmp_path / "out") + "\n")
    code, stdout, stderr = cli("sweep", spec_file, "--dry-run", "--format", "json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    names = [r["run_dir"] for r in doc["runs"]]
    assert len(names) == 16 and len(set(names)) == 16
    assert "rte/full/lr=1e-05,batch_size=16/seed-2" in names
    assert "rte/fake-p/lr=2e-05,p=0.3,batch_size=16/seed-1" in names
    assert {r["state"] for r in doc["runs"]} == {"new"}
    # The TASK argument overrides the file's task; the file written by a sweep repeats it exactly.
    s = make_spec({"task": "mrpc"}, spec_file)
    assert s.task == "mrpc" and s.seeds == [1, 2]
    original = expand(make_spec({}, spec_file))
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_yaml(make_spec({}, spec_file).to_yaml_dict()))
    again = expand(make_spec({}, copy))
    assert [(r.rel, r.config, r.args) for r in again] == [(r.rel, r.config, r.args) for r in original]


def test_seeds_and_seed_list():
    assert spec().seeds == [1, 2, 3]
    assert spec(seeds=2).seeds == [1, 2]
    assert spec(seed_list=["5,7", "9"]).seeds == [5, 7, 9]
    with pytest.raises(UsageError):
        spec(seeds=2, seed_list=["1"])


@pytest.mark.parametrize("name", sorted(grid_presets()))
def test_grid_presets_expand_against_the_registered_options(name):
    from sftune.registry import methods, regularizers

    data = load_grid_preset(name)
    assert data["description"] and data["source"] and data["grid"]
    needed = set(data.get("methods") or [])
    regs = {k.split(".")[1] for k in data["grid"] if k.startswith("reg.")}
    if not needed <= set(methods()) or not regs <= set(regularizers()):
        pytest.skip(f"{name}: method/regulariser not in this tree yet")
    runs = expand(spec(grid_preset=[name], seeds=1))  # validates every key and value through build()
    sizes = [len(v) for v in data["grid"].values()]
    assert len(runs) == len(needed) * math.prod(sizes)


def test_dps_appendix_d_grid_sizes():
    sizes = {name: [len(v) for v in load_grid_preset(name)["grid"].values()] for name in grid_presets()}
    assert sizes["dps-dense"] == sizes["dps-mix"] == [5, 3]
    assert sizes["child-tuning-d"] == [3, 5] and sizes["mixout"] == [8] and sizes["r3f"] == [2, 4]
    assert sizes["reinit"] == [7] and sizes["r-drop"] == [5] and sizes["stochastic-lr"] == [6]


def test_bad_sweeps_fail_in_one_line_before_anything_runs(cli, tmp_path):
    out = ("-o", tmp_path / "s")
    one_line_error(cli("sweep", "minilm", "rte", "--grid", "trian.lr=1e-5", *out), "unknown section 'trian'",
                   "Did you mean 'train'")
    one_line_error(cli("sweep", "minilm", "rte", "--grid", "train.lr=abc", *out), "train.lr", "expected a number")
    one_line_error(cli("sweep", "minilm", "rte", "--grid", "train.lr", *out), "--grid 'train.lr'", "key=v1,v2")
    one_line_error(cli("sweep", "minilm", "rte", "--grid", "train.seed=1,2", *out), "--seeds")
    one_line_error(cli("sweep", "minilm", "rte", "--method", "full,bitfitt", *out), "unknown method 'bitfitt'")
    one_line_error(cli("sweep", "minilm", "rte", "--grid-preset", "dps-mixx", *out), "unknown grid preset")
    one_line_error(cli("sweep", "minilm", "rte", "--jobs", "0", *out), "--jobs")
    one_line_error(cli("sweep", "minilm", "nosuchtask", *out), "unknown task")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: minilm\ntask: rte\ngrdi: {train.lr: [1]}\n")
    one_line_error(cli("sweep", bad), "unknown key 'grdi'", "Did you mean 'grid'")
    assert not (tmp_path / "s").exists()


def test_a_run_directory_made_with_other_options_is_refused(cli, tmp_path):
    out = tmp_path / "s"
    (run,) = expand(spec(seeds=1, output_dir=str(out), max_steps=5))
    other = dict(run.config, train={**run.config["train"], "max_steps": 7})
    (out / run.rel).mkdir(parents=True)
    (out / run.rel / "config.yaml").write_text(dump_yaml(other))
    one_line_error(cli("sweep", "minilm", "rte", "--seeds", "1", "--max-steps", "5", "-o", out, "--dry-run"),
                   "made with other options (train.max_steps)")
    (out / run.rel / "config.yaml").write_text(dump_yaml(run.config))
    code, stdout, _ = cli("sweep", "minilm", "rte", "--seeds", "1", "--max-steps", "5", "-o", out, "--dry-run",
                          "-f", "json")
    assert code == 0 and json.loads(stdout)["runs"][0]["state"] == "overwrite"


# ---------------------------------------------------------------------------------------------------- runner
def test_what_a_rerun_does_with_each_run_directory(tmp_path):
    d = RunDir(tmp_path / "r")
    assert state_of(d) == "new"
    d.path.mkdir()
    assert state_of(d) == "new"
    (d.path / "model.tmp").mkdir()
    assert state_of(d) == "overwrite"  # killed before it wrote config.yaml
    d.config.write_text("task: rte\n")
    assert state_of(d) == "overwrite"  # no checkpoint yet: start again, without its stale records
    (d.checkpoint / "trainer_state.json").parent.mkdir()
    (d.checkpoint / "trainer_state.json").write_text("{}")
    assert state_of(d) == "resume"
    d.results.write_text('{"status": "comp')  # torn write: not complete
    assert state_of(d) == "resume"
    d.results.write_text('{"status": "complete"}')
    assert state_of(d) == "skip"


def test_run_lock_is_exclusive_and_survives_in_children(tmp_path):
    a, b = RunLock(tmp_path / "x.lock"), RunLock(tmp_path / "x.lock")
    assert a.acquire() and not b.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=(a.fd,))
    try:
        a.release()  # the sweep is gone, its child still runs: still locked
        assert not b.acquire()
    finally:
        child.kill()
        child.wait()
    assert b.acquire()
    b.release()


def test_child_environments_split_cores_or_gpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert child_env(0, 2, [])["OMP_NUM_THREADS"] == str(max(1, cpu_cores() // 2))
    assert child_env(0, 64, [])["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in child_env(0, 1, [])
    assert [child_env(s, 3, ["3", "5"])["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["3", "5", "3"]
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert child_env(0, 2, [])["OMP_NUM_THREADS"] == "7"  # the user's setting wins


def test_failure_cause_is_the_childs_error_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("$ cmd\nWriting\rdone\nsftune: error: data file /x/RTE/train.tsv does not exist.\n")
    assert failure_cause(log, 2) == "data file /x/RTE/train.tsv does not exist."
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: Invalid learning rate: -1.0\n")
    assert failure_cause(log, 1) == "ValueError: Invalid learning rate: -1.0 (exit code 1)"
    assert failure_cause(tmp_path / "missing.log", -9) == "killed by SIGKILL"


FAKE_TRAIN = """
import json, os, sys
path, action = sys.argv[1], sys.argv[2]
if "lr=0.005" in path:
    print("sftune: error: boom (" + action + ")", file=sys.stderr)
    sys.exit(2)
os.makedirs(path, exist_ok=True)
acc = float(path.split("lr=")[1].split("/")[0]) * 100 + int(path[-1]) / 10
json.dump({"status": "complete", "method": "full", "seed": int(path[-1]),
           "metrics": {"validation": {"accuracy": acc, "f1": 1 - acc}},
           "main_metric": {"split": "validation", "name": "accuracy", "value": acc},
           "omp": os.environ.get("OMP_NUM_THREADS")}, open(os.path.join(path, "results.json"), "w"))
"""


def fake(script):
    def command(self, o, action):
        return [sys.executable, "-c", script, str(self._dir(o).path), action]

    return command


def test_failed_runs_are_named_the_others_kept_and_the_exit_code_says_so(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(Runner, "command", fake(FAKE_TRAIN))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "s"
    args = ("sweep", "minilm", "rte", "--grid", "train.lr=0.001,0.002,0.005", "--seeds", "2", "-j", "2", "-o", out)
    code, stdout, stderr = cli(*args)
    assert code == 1
    assert "2 of 6 runs failed" in stderr
    assert "FAIL  rte/full/lr=0.005/seed-1: boom (new)" in stdout
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"] == {"runs": 6, "done": 4, "failed": 2, "diverged": 0, "interrupted": 0,
                             "not_run": 0}
    assert {f["run_dir"]: f["cause"] for f in doc["failed"]} == {
        "rte/full/lr=0.005/seed-1": "boom (new)", "rte/full/lr=0.005/seed-2": "boom (new)"}
    by = {c["config"]: c for c in doc["configs"]}
    acc = by["lr=0.002"]["metrics"]["validation/accuracy"]
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(0.35)
    assert acc["std"] == pytest.approx(statistics.stdev([0.3, 0.4]))
    assert by["lr=0.005"]["n_seeds"] == 0 and by["lr=0.005"]["failed"] == 2
    assert doc["best"]["full"]["config"] == "lr=0.002"
    omp = {json.loads((out / r / "results.json").read_text())["omp"] for r in
           ("rte/full/lr=0.001/seed-1", "rte/full/lr=0.002/seed-2")}
    assert omp == {str(max(1, cpu_cores() // 2))}
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "method,config,lr,seed,status,run_dir,validation/accuracy,validation/f1,cause"
    assert csv_rows[5].startswith("full,lr=0.005,0.005,1,failed,") and csv_rows[5].endswith("boom (new)")
    assert "lr=0.002,0.002,2,0.35" in (out / "summary.csv").read_text()
    # Rerun: the complete runs are skipped, the failed ones tried again (and fail again).
    code, stdout, _ = cli(*args, "--format", "json")
    assert code == 1
    actions = {r["run_dir"]: r["action"] for r in json.loads(stdout)["runs"]}
    assert sorted(actions.values()) == ["new", "new", "skip", "skip", "skip", "skip"]


def test_ctrl_c_stops_the_children_and_exits_130(cli, tmp_path, monkeypatch):
    sleeper = ("import os, signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
               "os.makedirs(sys.argv[1])\nopen(os.path.join(sys.argv[1], 'started'), 'w').close()\ntime.sleep(60)\n")
    monkeypatch.setattr(Runner, "command", fake(sleeper))
    monkeypatch.setattr(runner_mod, "GRACE_S", 0.2)
    out = tmp_path / "s"

    def ctrl_c_once_both_run():
        deadline = time.time() + 60
        while len(list(out.glob("rte/full/default/seed-*/started"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()

    # A terminal's Ctrl-C reaches a fresh `sftune` process through Python's default SIGINT handler, which
    # interrupt_main calls. Installed here because the suite's process may have another by now: run after the
    # tests in tests/*/ (which one installs it was not found), the interrupt did nothing and the run took 60 s.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_both_run, daemon=True).start()
        code, stdout, stderr = cli("sweep", "minilm", "rte", "--seeds", "3", "-j", "2", "-o", out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "run the same command again" in stderr
    doc = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["interrupted", "interrupted", "queued"]


# ------------------------------------------------------------------------------------------------ remote code
# A child that is the real `sftune train` with its tokenizer loader replaced: the loader appends what it was told
# about trust_remote_code to a file and stops the run there (exit 2), so nothing is loaded from anywhere.
STOP_AT_LOADER = """
import json, sys
import sftune.engine.loop as loop
from sftune.errors import UsageError

told = sys.argv[1]

def fake(name, trust_remote_code=False, revision=None):
    with open(told, "a") as f:
        f.write(json.dumps(trust_remote_code) + "\\n")
    raise UsageError("stopped at the loader")

loop.load_tokenizer = fake
sys.argv = ["sftune", *sys.argv[2:]]
from sftune.cli import main
main()
"""


def test_trust_remote_code_reaches_every_child_and_only_with_the_flag(cli, glue_dir, tmp_path, monkeypatch):
    real = Runner.command
    told = tmp_path / "loader.jsonl"

    def stop_at_loader(self, o, action):
        cmd = real(self, o, action)
        assert cmd[1:4] == ["-m", "sftune", "train"]
        return [sys.executable, "-c", STOP_AT_LOADER, str(told), *cmd[3:]]

    monkeypatch.setattr(Runner, "command", stop_at_loader)
    args = ("sweep", "minilm", "rte", "--data-dir", glue_dir, "--seeds", "1")
    warning = "warning: --trust-remote-code: running the Python code that ships with minilm"
    for flag, methods, out in ((True, "full,bitfit", tmp_path / "with"), (False, "full", tmp_path / "without")):
        told.unlink(missing_ok=True)
        code, stdout, stderr = cli(*args, "--method", methods, *(["--trust-remote-code"] if flag else []), "-o", out)
        assert code == 1, (stdout, stderr)  # every run stopped at the loader: failed there, not refused before it
        n = len(methods.split(","))
        assert stderr.count(warning) == (1 if flag else 0), stderr
        assert told.read_text().split() == ["true" if flag else "false"] * n
        doc = json.loads((out / "summary.json").read_text())
        assert [f["cause"] for f in doc["failed"]] == ["stopped at the loader"] * n
        configs = sorted((out / ".sweep" / "configs").glob("*.yaml"))
        assert [yaml.safe_load(c.read_text())["model"]["trust_remote_code"] for c in configs] == [flag] * n
        for log in (out / ".sweep" / "logs").glob("*.log"):
            text = log.read_text()  # the child's command line, then its output
            assert ("--format json --trust-remote-code\n" in text) == flag and (warning in text) == flag
        assert not [k for k in yaml.safe_load((out / "sweep.yaml").read_text()) if "trust" in k]  # typed again
    # Why the children are given the flag: train refuses a config that turns remote code on without it.
    flagged = sorted((tmp_path / "with" / ".sweep" / "configs").glob("*.yaml"))[0]
    one_line_error(cli("train", "--config", flagged, "-o", tmp_path / "r"),
                   f"--config {flagged}: {flagged} was trained with --trust-remote-code",
                   "pass --trust-remote-code again")


def test_a_sweep_cannot_turn_remote_code_on_without_the_flag_nor_continue_such_runs(cli, tmp_path):
    out = tmp_path / "s"
    base = ("sweep", "minilm", "rte", "--seeds", "1", "-o", out, "--dry-run")
    train = cli("train", "minilm", "rte", "--set", "model.trust_remote_code=true", "--dry-run")
    one_line_error(train, "--set sets model.trust_remote_code", "only the command-line flag --trust-remote-code")
    refused = "sets model.trust_remote_code, which would run the model repository's own Python code"
    for entry in (("--set", "model.trust_remote_code=true"), ("--grid", "model.trust_remote_code=false,true")):
        for flag in ((), ("--trust-remote-code",)):  # as in train: the flag does not make --set allowed
            one_line_error(cli(*base, *entry, *flag), refused, "only the command-line flag --trust-remote-code")
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text("model: minilm\ntask: rte\nset: {model.trust_remote_code: true}\n")
    one_line_error(cli("sweep", spec_file, "--dry-run"), refused)
    # A run directory made with the flag: continuing the sweep needs it again (as train --resume does).
    (run,) = expand(make_spec({"model": "minilm", "task": "rte", "seeds": 1, "output_dir": str(out),
                               "trust_remote_code": True}))
    assert run.config["model"]["trust_remote_code"] is True and "--trust-remote-code" in run.args
    (out / run.rel).mkdir(parents=True)
    (out / run.rel / "config.yaml").write_text(dump_yaml(run.config))
    one_line_error(cli(*base), f"{out / run.rel} was trained with --trust-remote-code",
                   "pass --trust-remote-code again to continue the sweep")
    code, stdout, stderr = cli(*base, "--trust-remote-code", "-f", "json")
    assert code == 0 and json.loads(stdout)["runs"][0]["state"] == "overwrite", stderr
    assert "--trust-remote-code" in json.loads(stdout)["runs"][0]["args"]
    assert "warning: --trust-remote-code" in stderr


def test_mean_and_sample_std():
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.1, 0.2, 0.6])
    assert mean == pytest.approx(0.3) and std == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))
    records = [Record("rte", "m", c, s, f"{c}/{s}", "complete", results={"metrics": {"validation": {"accuracy": v}},
               "main_metric": {"split": "validation", "name": "accuracy"}}) for c, s, v in
               [("a", 1, 0.5), ("a", 2, 0.7), ("b", 1, 0.65), ("b", 2, 0.66)]]
    doc = summarize(records)
    assert doc["best"]["m"]["config"] == "b" and [c["best"] for c in doc["configs"]] == [False, True]


# --------------------------------------------------------------------------------------- a real, killed sweep
# train.eval_every=1 gives every run a checkpoint after step 1, so a killed run is resumed from it (or started
# again when it had none yet). (With train.save_every=1 and no evaluation the resumed runs differ in the last
# digits: a resume mid-epoch draws the data loader's base seed from the restored global RNG, which the
# uninterrupted run drew before step 1; an evaluation between the two steps happens to draw once as well.)
SWEEP = ("--method", "full,bitfit", "--grid", "train.lr=1e-3,2e-3", "--seeds", "2", "--jobs", "2",
         "--set", "data.train_size=16", "--set", "train.max_steps=2", "--batch-size", "4",
         "--set", "data.eval_batch_size=128", "--set", "train.eval_every=1", "--case-study")
EXPECTED = {f"rte/{m}/lr={lr}/seed-{s}" for m in ("full", "bitfit") for lr in ("0.001", "0.002") for s in (1, 2)}


def sweep_args(model, glue, out):
    return ["sweep", str(model), "rte", "--data-dir", str(glue), *SWEEP, "-o", str(out)]


@pytest.fixture(scope="module")
def reference(tiny_bert, glue_dir, tmp_path_factory):
    """An uninterrupted sweep: 2 methods x 2 learning rates x 2 seeds on the tiny BERT, 2 runs at a time."""
    from typer.testing import CliRunner

    from sftune.cli import app, quiet_libraries

    quiet_libraries()
    out = tmp_path_factory.mktemp("sweep") / "straight"
    result = CliRunner().invoke(app, sweep_args(tiny_bert, glue_dir, out), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "[8/8] done" in result.stdout and "Case study" in result.stdout
    return out


def run_dirs(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in root.rglob("config.yaml") if ".sweep" not in p.parts}


def test_sigkill_mid_sweep_then_rerun_finishes_every_run_once_with_the_same_summary(
        reference, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sftune", *sweep_args(tiny_bert, glue_dir, out)]
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            dirs = [RunDir(out / rel) for rel in sorted(EXPECTED)]
            complete = [d for d in dirs if d.is_complete()]
            partial = [d for d in dirs if d.config.is_file() and not d.is_complete()]
            # (Not between a run's results.json and its final manifest update: see the report on run.py.)
            settled = all(json.loads(d.manifest.read_text())["status"] == "complete" for d in complete)
            if complete and partial and settled:
                os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running children
                break
            time.sleep(0.05)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    assert not (out / "summary.json").exists()
    left = {rel: state_of(RunDir(out / rel)) for rel in EXPECTED}  # what the kill left behind
    assert "skip" in left.values() and {"resume", "overwrite"} & set(left.values()), left

    again = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    doc = json.loads(again.stdout)
    assert {r["run_dir"]: r["action"] for r in doc["runs"]} == left  # finished runs skipped, the rest resumed/run
    assert doc["counts"]["done"] == 8 and doc["complete"]

    # Every run exactly once, complete, and nothing else in either tree.
    for root in (reference, out):
        assert run_dirs(root) == EXPECTED
        assert {str(p.relative_to(root)) for p in root.glob("rte/*/*/*")} == EXPECTED
        for rel in EXPECTED:
            d = RunDir(root / rel)
            assert d.is_complete() and json.loads(d.manifest.read_text())["status"] == "complete"
            assert not (d.path / "model.tmp").exists() and not (d.path / "model.old").exists()
            steps = [r["step"] for r in read_jsonl(d.metrics) if r["type"] == "train"]
            assert steps == sorted(set(steps)) and steps[-1] == 2
    # The same per-example predictions (probabilities too) and the same tables as the uninterrupted sweep.
    for rel in EXPECTED:
        a = (reference / rel / "predictions" / "validation.jsonl").read_text()
        assert a == (out / rel / "predictions" / "validation.jsonl").read_text(), rel
        assert len(a.splitlines()) == 277
    ref = json.loads((reference / "summary.json").read_text())
    new = json.loads((out / "summary.json").read_text())
    assert new["configs"] == ref["configs"] and new["best"] == ref["best"]
    assert [len(c["seeds"]) for c in new["configs"]] == [2, 2, 2, 2]
    for name in ("results.csv", "summary.csv", "case_study.json"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    assert yaml.safe_load((out / "sweep.yaml").read_text())["seed_list"] == [1, 2]


def test_case_study_shares_match_the_predictions_of_each_methods_best_config(reference, cli):
    summary = json.loads((reference / "summary.json").read_text())
    study = json.loads((reference / "case_study.json").read_text())
    assert set(study["methods"]) == {"full", "bitfit"}
    for method in ("full", "bitfit"):
        best = summary["best"][method]["config"]
        tables = [{r["idx"]: r for r in read_jsonl(reference / "rte" / method / best / f"seed-{s}" / "predictions"
                                                     / "validation.jsonl")} for s in (1, 2)]
        right = [sum(t[i]["prediction"] == t[i]["label"] for t in tables) for i in tables[0]]
        got = study["methods"][method]["splits"]["validation"]
        assert study["methods"][method]["config"] == best and got["runs"] == 2 and got["examples"] == 277
        assert (got["easy"], got["hard"]) == (right.count(2), right.count(0))
        assert got["easy_share"] == pytest.approx(right.count(2) / 277)
    code, stdout, _ = cli("analyze", reference, "--format", "json")
    assert code == 0 and json.loads(stdout)["tasks"]["rte"]["case_study"] == study


def test_live_table_shows_seeds_done_mean_std_so_far_and_status():
    from rich.console import Console

    from sftune.cli.sweep import progress_table
    from sftune.sweep.runner import Outcome

    outcomes = [Outcome(r) for r in expand(spec(grid=["train.lr=1e-3,2e-3"], seeds=3))]
    for o, status, acc in zip(outcomes, ["complete", "cached", "running", "failed", "queued", "queued"],
                              [0.2, 0.4, None, None, None, None]):
        o.status = status
        if acc is not None:
            o.results = {"metrics": {"validation": {"accuracy": acc}}}
    console = Console(record=True, width=150)
    console.print(progress_table(outcomes, "validation/accuracy"))
    text = console.export_text()
    row1 = next(line for line in text.splitlines() if "lr=0.001" in line)
    row2 = next(line for line in text.splitlines() if "lr=0.002" in line)
    assert "2/3" in row1 and "0.3000 ± 0.1414" in row1 and "1 running" in row1
    assert "0/3" in row2 and "1 failed, 2 queued" in row2
