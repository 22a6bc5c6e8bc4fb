"""bench/quality/longer.py (the same run for longer) with `sftune train` replaced by a fake that writes a run
directory: the command keeps the profile's settings but its own steps and evaluation interval; finished runs
are read, not rerun; interrupted ones resume; the JSON keeps other runs."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import load_bench

PROFILE = {"description": "tiny", "model": "minilm", "data_dir": "/data", "out": "unused", "records": "records",
           "seeds": 2, "tasks": {"mrpc": {"heldout": 40, "train_size": 100, "steps": 20}},
           "settings": {"main": {}}, "groups": {"sparse": {"lr_grid": [1e-3], "methods": ["bitfit"]}},
           "waves": [["bitfit"]], "set": ["train.eval_every=1000000", "train.batch_size=8"]}


@pytest.fixture
def longer(tmp_path, monkeypatch):
    module = load_bench("quality/longer.py")
    calls = []

    def fake_train(cmd, stdout=None):
        calls.append(cmd)
        if "nosuch" in cmd:
            return 2  # sftune's exit for a bad option: no run directory
        arg = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
        run = Path(arg("--output-dir"))
        steps, every = int(arg("--max-steps")), int(next(s for s in cmd if s.startswith("train.eval_every="))[17:])
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text("{}")
        rows = [{"type": "train", "step": s, "loss": 0.7 - s / 1000} for s in range(10, steps + 1, 10)]
        rows += [{"type": "eval", "step": s, "validation/f1": 0.81 + s / 10000, "validation/accuracy": 0.7,
                  "heldout/f1": 0.8} for s in range(every, steps + 1, every)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "predictions").mkdir(exist_ok=True)
        preds = [("equivalent", 0.9), ("not_equivalent", 0.8), ("equivalent", 0.7), ("not_equivalent", 0.2)]
        (run / "predictions" / "validation.jsonl").write_text("".join(
            json.dumps({"idx": i, "label": g, "prediction": "equivalent", "probabilities": [1 - p, p]}) + "\n"
            for i, (g, p) in enumerate(preds)))
        (run / "results.json").write_text(json.dumps({"status": "complete"}))
        return 0

    monkeypatch.setattr(module.subprocess, "call", fake_train)
    monkeypatch.setattr(module, "env_for_runs", lambda threads: None)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["longer.py", *argv, "--profile", str(profile),
                                          "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")])
        module.main()
        return json.loads((tmp_path / "r.json").read_text())

    return module, calls, main


def test_the_profiles_run_but_longer_and_evaluated_more_often(longer):
    module, _, _ = longer
    cmd = module.train_command(PROFILE, "mrpc", "bitfit", 3e-3, 2, 600, 150, "RUN", None)
    assert cmd[:5] == ["sftune", "train", "minilm", "mrpc", "--method"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["data.validation_from_train=40", "train.batch_size=8", "train.eval_every=150", "train.lr=0.003"]
    assert cmd[cmd.index("--max-steps") + 1] == "600" and cmd[cmd.index("--seed") + 1] == "2"
    assert cmd[cmd.index("--train-size") + 1] == "100" and "--stratified" in cmd
    assert cmd[cmd.index("--data-dir") + 1] == "/data" and cmd[cmd.index("--output-dir") + 1] == "RUN"


def test_runs_once_keeps_other_runs_and_resumes_an_interrupted_one(longer, tmp_path):
    module, calls, main = longer
    out = main("mrpc", "bitfit:3e-3", "--steps", "60", "--every", "20")
    (run,) = out["runs"]
    assert (run["method"], run["lr"], run["steps"], run["every"], run["status"]) == ("bitfit", 3e-3, 60, 20, "complete")
    assert [e["step"] for e in run["evals"]] == [20, 40, 60]
    assert run["evals"][-1] == {"step": 60, "validation/f1": 0.816, "heldout/f1": 0.8}  # the main metric only
    assert run["train_loss"] == [[50, 0.65]]
    assert run["ranking"]["validation"]["auc"] == 0.75  # 3 of the 4 (equivalent, not) pairs ordered right
    assert len(calls) == 1

    out = main("mrpc", "bitfit:3e-3", "--steps", "60", "--every", "20")  # finished: read again, not rerun
    assert len(calls) == 1 and len(out["runs"]) == 1

    out = main("mrpc", "bitfit:3e-3", "--steps", "80", "--every", "40")  # another length joins the file
    assert [r["steps"] for r in out["runs"]] == [60, 80] and len(calls) == 2
    assert "--resume" not in calls[-1]

    run_dir = tmp_path / "out" / "longer" / "mrpc" / "bitfit-lr0.003-seed1-80steps"
    (run_dir / "results.json").write_text(json.dumps({"status": "interrupted"}))
    main("mrpc", "bitfit:3e-3", "--steps", "80", "--every", "40")
    assert calls[-1][-1] == "--resume" and len(calls) == 3


def test_a_method_without_a_rate_needs_the_profiles_choice(longer):
    _, calls, main = longer
    with pytest.raises(SystemExit, match="has not chosen its rate on mrpc yet"):
        main("mrpc", "bitfit", "--steps", "60", "--every", "20")
    assert calls == []


def test_a_run_that_does_not_complete_is_recorded_so_and_the_script_fails(longer, tmp_path):
    _, calls, main = longer
    with pytest.raises(SystemExit) as stop:
        main("mrpc", "nosuch:1e-3", "bitfit:3e-3", "--steps", "60", "--every", "20")
    assert stop.value.code == 2 and len(calls) == 1  # a bad option stops before the next run
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert (run["method"], run["status"], run["evals"]) == ("nosuch", "missing", [])
