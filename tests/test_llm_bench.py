"""The decoder-LM benchmark runner (bench/llm/run.py) on a synthetic GSM8K and a stand-in for sftune: fixed
disjoint data, the units and their commands, records that let a rerun skip finished work, resuming an
interrupted training, a changed profile rerunning what it changed, the report from the records alone."""

import json
import sys
from pathlib import Path

import pytest

from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_bench("llm/run.py")


@pytest.fixture
def profile(tmp_path):
    data = tmp_path / "gsm8k"
    data.mkdir()
    for name, n in (("train.jsonl", 30), ("test.jsonl", 10)):
        rows = [{"question": f"{name} q{i}", "answer": f"a{i} #### {i}"} for i in range(n)]
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": "smollm2", "records": str(tmp_path / "records.jsonl"), "set": ["train.eval_every=1000"],
            "gsm8k": {"data_dir": str(data), "split_seed": 0, "heldout": 5, "train": 20, "test": 4,
                      "batch_size": 2, "steps": 3, "max_length": 64, "max_new_tokens": 8, "eval_batch_size": 4,
                      "methods": {"full": {"lr": 1e-4}, "lora": {"lr": 2e-4, "set": ["method.rank=4"]}}},
            "sst2": {"data_dir": "/glue", "train": 50, "batch_size": 4, "steps": 2, "max_length": 32,
                     "eval_batch_size": 8, "methods": {"full": {"lr": 2e-5}}}}


def fake_sftune(calls):
    """Stands in for run_process: writes what `sftune train` / `sftune eval` would, records the command."""

    def run(cmd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if cmd[1] == "eval":
            loss = 2.0 if cmd[2] == "smollm2" else 1.5
            metrics = {"loss": loss} if "data.max_new_tokens=0" in cmd else {"loss": loss, "exact_match": 0.25}
            (out / "metrics.json").write_text(json.dumps({"metrics": {"test": metrics}}))
        else:
            split = "dev" if "sst2" in cmd else "test"
            (out / "results.json").write_text(json.dumps({
                "status": "complete", "metrics": {split: {"loss": 1.4, "exact_match": 0.5, "accuracy": 0.8}},
                "n_train": 20, "steps": 3, "train_seconds": 30.0, "trainable": {"all": {"trainable": 1000}}}))
            (out / "manifest.json").write_text(json.dumps({"git_commit": "abc", "timings": {"finished": "now"}}))
            (out / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "loss": x}) + "\n"
                                                       for x in (1.3, 1.1, 1.0)))
            (out / "model").mkdir(exist_ok=True)
        return 0, 1.0, 123.0, 0.5

    return run


def test_the_data_is_fixed_and_disjoint(bench, profile, tmp_path):
    g = profile["gsm8k"]
    dirs = bench.prepare_gsm8k(g, tmp_path / "out")
    read = lambda d, f: (Path(d) / f).read_text().splitlines()  # noqa: E731
    heldout, train, test = read(dirs["heldout"], "test.jsonl"), read(dirs["main"], "train.jsonl"), read(
        dirs["main"], "test.jsonl")
    assert (len(heldout), len(train), len(set(heldout) | set(train))) == (5, 20, 25)
    assert test == (Path(g["data_dir"]) / "test.jsonl").read_text().splitlines()[:4]  # the first rows
    assert bench.prepare_gsm8k(g, tmp_path / "again") == {**dirs, "main": str(tmp_path / "again/data/gsm8k"),
                                                           "heldout": str(tmp_path / "again/data/gsm8k-heldout")}
    assert bench.data_md5({**g, "split_seed": 1}) != dirs["md5"]


def test_every_unit_runs_once_is_recorded_and_a_rerun_skips_it(bench, profile, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run_process", fake_sftune(calls))
    out, records = tmp_path / "out", Path(profile["records"])
    assert bench.run_all("p", profile, out, records, None, dry_run=False) == 0
    kinds = [(c[1], c[2] if c[1] == "eval" else c[3], "max_new_tokens=0" in " ".join(c)) for c in calls]
    assert kinds == [("eval", "smollm2", False), ("eval", "smollm2", True),  # base: test subset, held-out loss
                     ("train", "gsm8k", False), ("eval", str(out / "gsm8k/full/run"), True),
                     ("train", "gsm8k", False), ("eval", str(out / "gsm8k/lora/run"), True),
                     ("train", "sst2", False)]
    assert "method.rank=4" in calls[4] and calls[4][calls[4].index("--lr") + 1] == "0.0002"
    recs = [json.loads(x) for x in records.read_text().splitlines()]
    assert [(r["task"], r["method"]) for r in recs] == [("gsm8k", "base"), ("gsm8k", "full"), ("gsm8k", "lora"),
                                                        ("sst2", "full")]
    base, full = recs[0], recs[1]
    assert base["metrics"] == {"test": {"loss": 2.0, "exact_match": 0.25}, "heldout": {"loss": 2.0}}
    assert full["metrics"]["heldout"] == {"loss": 1.5} and full["metrics"]["test"]["exact_match"] == 0.5
    assert (full["step_seconds"], full["loss_first"], full["procs"]["train"]["peak_rss_mb"]) == (10.0, 1.3, 123)
    assert not (out / "gsm8k/full/run/model").exists()  # pruned once recorded
    calls.clear()
    assert bench.run_all("p", profile, out, records, None, dry_run=False) == 0
    assert calls == []
    # A changed learning rate reruns that unit only.
    profile["gsm8k"]["methods"]["full"]["lr"] = 3e-4
    (out / "gsm8k/full/run/results.json").unlink()
    assert bench.run_all("p", profile, out, records, None, dry_run=False) == 0
    assert [c[1] for c in calls] == ["train", "eval"] and "0.0003" in calls[0]
    block = bench.report("p", profile, bench.load_records(records, profile, bench.data_md5(profile["gsm8k"])),
                         "python bench/llm/run.py p")
    assert "| before (base model) |" in block and "0.250 (1/4)" in block and "| full | 0.0003 |" in block
    assert "1.300 → 1.133" in block and "| sst2" not in block and "0.800" in block
    assert "Exact match barely moves" in block and "full 1 → 2 rows, val loss 2.000 → 1.500" in block


def test_an_interrupted_training_resumes_and_a_failed_one_is_reported(bench, profile, tmp_path, monkeypatch):
    calls = []
    run = fake_sftune(calls)

    def failing(cmd):
        calls.append(cmd)
        return 1, 1.0, 10.0, 0.5

    out, records = tmp_path / "out", Path(profile["records"])
    (out / "gsm8k/full/run/checkpoint").mkdir(parents=True)
    (out / "gsm8k/full/run/config.yaml").write_text("task: gsm8k\n")
    monkeypatch.setattr(bench, "run_process", run)
    assert bench.run_all("p", profile, out, records, ["full"], dry_run=False) == 0
    assert calls[0] == ["sftune", "train", "--resume", "-o", str(out / "gsm8k/full/run"), "--format", "json"]
    assert [c[1] for c in calls] == ["train", "eval", "train"]  # gsm8k/full, its held-out loss, sst2/full
    calls.clear()
    monkeypatch.setattr(bench, "run_process", failing)
    assert bench.run_all("p", profile, out, records, ["lora"], dry_run=False) == 1
    assert len(calls) == 1  # the held-out evaluation waits for a training that finished
    assert "| lora | not run yet |" in bench.report(
        "p", profile, bench.load_records(records, profile, bench.data_md5(profile["gsm8k"])), "x")


def test_peak_memory_is_the_child_processes_own(bench, monkeypatch):
    import resource

    touch = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"  # 200 MB, every page written
    rc, wall, rss, cpu = bench.run_process([sys.executable, "-c", touch])
    # Linux keeps a child's high-water mark across exec, so the parent's pages at the fork may count too: the
    # runner holds ~30 MB, this test process (after other tests loaded models) far more.
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert rc == 0 and wall > 0 and cpu > 0 and 200 < rss < 400 + parent_mb
    seen, popen = [], bench.subprocess.Popen
    monkeypatch.setattr(bench.subprocess, "Popen", lambda cmd, **kw: seen.append(cmd) or popen(
        [sys.executable, "-c", "pass"], **kw))
    bench.run_process(["sftune", "eval", "x"])
    assert seen == [[sys.executable, "-m", "sftune", "eval", "x"]]  # this interpreter's sftune, not PATH's
