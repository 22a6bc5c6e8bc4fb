"""One config-tree builder: train, sweep, transfer and memprofile give the same tree for the same options, and a
sweep's run trains from exactly the configuration the planner validated (`sftune train --config`)."""

from __future__ import annotations

import sys

import pytest

from sftune import config as config_mod
from sftune.config import build, dump_yaml, load_yaml
from sftune.errors import UsageError

SHARED = ("--lr", "3e-5", "--batch-size", "8", "--max-steps", "5", "--data-dir", "GLUE", "--train-size", "32",
          "--stratified", "--mask-mode", "update", "--preset", "dps", "--reg", "llrd:eta=0.9",
          "--set", "train.warmup_ratio=0.2", "--set", "data.max_length=64", "--trust-remote-code")


@pytest.fixture
def trees(monkeypatch):
    """Every tree a command hands to config.build, in order; each build then stops the command (exit 2)."""
    seen: list[dict] = []

    def capture(tree):
        seen.append(tree)
        raise UsageError("captured")

    import sftune.cli.train
    import sftune.cli.transfer
    import sftune.sweep.plan

    for module in (config_mod, sftune.cli.train, sftune.cli.transfer, sftune.sweep.plan):
        monkeypatch.setattr(module, "build", capture)
    return seen


def tree_of(cli, trees, *args) -> dict:
    before = len(trees)
    code, _, stderr = cli(*args)
    assert code == 2 and "captured" in stderr, stderr
    assert len(trees) == before + 1
    return trees[-1]


def test_train_sweep_and_transfer_build_the_same_tree(cli, trees):
    train = tree_of(cli, trees, "train", "minilm", "rte", "--method", "dps-mix", "--seed", "2", *SHARED)
    sweep = tree_of(cli, trees, "sweep", "minilm", "rte", "--method", "dps-mix", "--seed-list", "2", *SHARED)
    transfer = tree_of(cli, trees, "transfer", "minilm", "--source", "rte", "--targets", "rte", "--method",
                       "dps-mix", "--seed", "2", *SHARED)
    assert train == sweep == transfer
    # What each part of the tree came from: the preset under the options, the options under --set.
    assert train["preset"] == "dps" and train["model"] == {"name": "minilm", "trust_remote_code": True}
    assert train["task"] == "rte"
    assert train["train"]["lr"] == 3e-5 and train["train"]["seed"] == 2 and train["train"]["warmup_ratio"] == "0.2"
    assert train["data"] == {**train["data"], "data_dir": "GLUE", "train_size": 32, "stratified": True,
                             "max_length": "64"}
    assert train["method"]["name"] == "dps-mix" and train["method"]["mask_mode"] == "update"
    assert train["regs"] == [{"name": "llrd", "eta": "0.9"}]


def test_memprofile_and_train_resolve_to_the_same_configuration(cli, trees, monkeypatch):
    profile = tree_of(cli, trees, "memprofile", "minilm", "rte", "--methods", "bitfit", "--batch-sizes", "16",
                      "--steps", "3", "--seq-len", "64", "--mask-mode", "update", "--cpu",
                      "--set", "train.warmup_ratio=0.2")
    train = tree_of(cli, trees, "train", "minilm", "rte", "--method", "bitfit", "--mask-mode", "update",
                    "--batch-size", "16", "--max-steps", "6", "--seed", "42", "--set", "data.max_length=64",
                    "--set", "train.precision=no", "--set", "train.cpu=true", "--set", "train.measure_changed=false",
                    "--set", f"train.log_every={10**9}", "--set", "train.grad_accum=1",
                    "--set", "train.warmup_ratio=0.2")
    assert set(profile) == set(train) - {"preset"}
    assert profile["method"]["mask_mode"] == "update" and profile["train"]["warmup_ratio"] == "0.2"
    monkeypatch.undo()  # judged by the real build: memprofile's typed values, train's texts
    assert build(profile).to_dict() == build(train).to_dict()


def test_a_sweep_run_trains_from_the_planned_configuration(tmp_path, cli, monkeypatch):
    from sftune.sweep.plan import expand
    from sftune.sweep.runner import Outcome, Runner
    from sftune.sweep.spec import make_spec

    (run,) = expand(make_spec({"model": "minilm", "task": "rte", "method": ["bitfit"], "seeds": 1,
                               "grid": ["train.lr=2e-5"], "preset": "dps", "reg": ["llrd:eta=0.9"],
                               "set": ["train.max_steps=3"]}))
    runner = Runner([run], tmp_path / "out")
    o = Outcome(run)
    cmd = runner.command(o, "resume")
    assert cmd[:4] == [sys.executable, "-m", "sftune", "train"] and cmd[-1] == "--resume"
    assert "--config" in cmd and not {"--lr", "--set", "--reg", "--preset", "minilm"} & set(cmd)
    config_file = cmd[cmd.index("--config") + 1]
    # The runner writes the planner's configuration there just before it starts the child ...
    o.lock = type("NoLock", (), {"fd": None})()
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: None)
    runner._start(o, "new", 0)
    assert load_yaml(tmp_path / "out" / ".sweep" / "configs" / "rte__bitfit__lr=2e-05__seed-1.yaml") == run.config
    # ... and `sftune train --config` builds exactly that configuration from it.
    seen = []

    def capture(tree):
        seen.append(tree)
        raise UsageError("captured")

    monkeypatch.setattr("sftune.cli.train.build", capture)
    code, _, stderr = cli("train", "--config", config_file, "-o", tmp_path / "run")
    assert code == 2 and "captured" in stderr, stderr
    assert build(seen[0]).to_dict() == run.config


def test_train_config_file_errors_are_one_line(cli, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml({"model": {"name": "minilm"}, "task": "rte", "method": {"name": "bitfit"}}))
    code, _, stderr = cli("train", "minilm", "rte", "--config", path)
    assert code == 2 and "leave MODEL and TASK out" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = cli("train", "--config", path, "--method", "full")
    assert code == 2 and "differs from the stored run's method bitfit" in stderr
    code, _, stderr = cli("train", "--config", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in stderr and "Traceback" not in stderr
