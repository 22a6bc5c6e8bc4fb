"""The quality benchmark's script (bench/quality/run.py): sweep commands, the majority row, the report."""

import json
from pathlib import Path

import pytest

from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_bench("quality/run.py")


def test_profiles_expand_to_one_sweep_per_task_and_group(bench, tmp_path):
    for name, models in (("cpu", 1), ("gpu", 2)):
        _, profile = bench.load_profile(name)
        sweeps = bench.sweep_commands(profile, tmp_path, None, None)
        assert len(sweeps) == models * len(profile["tasks"]) * len(profile["groups"])
        methods = {m for s in sweeps for m in s["cmd"][s["cmd"].index("--method") + 1].split(",")}
        assert {"full", "frozen", "bitfit", "random", "top", "stochastic", "child-tuning-d", "child-tuning-f",
                "dps-dense", "dps-mix"} <= methods
    _, cpu = bench.load_profile("cpu")
    cmd = bench.sweep_commands(cpu, tmp_path, None, None)[0]["cmd"]
    assert cmd[:4] == ["sftune", "sweep", "minilm", "cola"] and "--stratified" in cmd


def test_majority_row_on_real_dev_sets(bench, glue_dir):
    scores = bench.majority_scores(["mrpc", "rte", "cola"], str(glue_dir))
    # MRPC dev: 279 of 408 pairs are paraphrases (the training majority), so F1 = 2*279 / (279 + 408)
    assert scores["mrpc"]["accuracy"] == pytest.approx(279 / 408)
    assert scores["mrpc"]["f1"] == pytest.approx(2 * 279 / (279 + 408))
    assert scores["cola"]["matthews"] == 0.0
    assert 0.4 < scores["rte"]["accuracy"] < 0.6


def test_report_tables_and_block_replacement(bench, glue_dir, tmp_path):
    _, profile = bench.load_profile("cpu")
    profile["tasks"] = {"mrpc": {}}
    out = tmp_path / "out"
    for method, seed, f1 in (("full", 1, 0.80), ("full", 2, 0.84), ("bitfit", 1, 0.70)):
        run = out / "minilm" / "mrpc" / "g" / "mrpc" / method / "default" / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"status": "complete", "task": "mrpc", "method": method,
                                                      "metrics": {"validation": {"f1": f1, "accuracy": 0.7}}}))
    block = bench.report("cpu", profile, out, str(glue_dir), ["cpu"])
    assert "| full | 0.0001 | 82.0 ± 2.8 (2) |" in block
    assert "| bitfit | 0.001 | 70.0 ± 0.0 (1) |" in block
    assert "| majority class | — | 81.2 |" in block
    assert "minilm bitfit on mrpc: 70.0 <= 81.2" in block and "minilm full on mrpc" not in block
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nintro\n\n<!-- quality:cpu:start -->\nold\n<!-- quality:cpu:end -->\n\noutro\n")
    bench.write_block(doc, "cpu", block)
    bench.write_block(doc, "cpu", block)  # idempotent
    text = doc.read_text()
    assert text.count("<!-- quality:cpu:start -->") == 1 and "old" not in text
    assert text.startswith("# Results\n\nintro") and text.rstrip().endswith("outro")
