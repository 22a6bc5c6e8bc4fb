"""The easy/hard case study on hand-made predictions, directly and through `sftune analyze`."""

import json

import pytest

from sftune.sweep.case_study import easy_hard

LABELS = ["A", "B", "A", "B", "A"]


def write_run(root, rel, preds, method="m", seed=1, acc=0.5, labels=LABELS, extra=()):
    d = root / rel
    (d / "predictions").mkdir(parents=True)
    rows = [{"idx": i, "label": g, "prediction": p} for i, (g, p) in enumerate(zip(labels, preds))]
    rows += [{"idx": 100 + j, "label": "A", "prediction": "A"} for j in range(len(extra))]
    (d / "predictions" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "results.json").write_text(json.dumps({
        "status": "complete", "task": "rte", "method": method, "seed": seed,
        "metrics": {"validation": {"accuracy": acc}},
        "main_metric": {"split": "validation", "name": "accuracy", "value": acc}}))
    return d


def test_three_runs_by_hand(tmp_path):
    runs = [write_run(tmp_path, "r1", "ABBAA", extra=[1]),  # right: 0 1 4 (+ an example the others lack)
            write_run(tmp_path, "r2", "AABBB"),             # right: 0 3
            write_run(tmp_path, "r3", "BBAAA")]             # right: 1 2 4
    # right counts per example: 2 2 1 1 2 of 3 -> easy 0 1 4, hard 2 3
    s = easy_hard(runs)["validation"]
    assert (s["runs"], s["examples"], s["easy"], s["hard"], s["mixed"]) == (3, 5, 3, 2, 0)
    assert s["easy_share"] == pytest.approx(0.6) and s["hard_share"] == pytest.approx(0.4)
    # Two runs: counts 2 1 0 1 1 of 2 -> easy 0, hard 2, the three with one right each are mixed.
    s = easy_hard(runs[:2])["validation"]
    assert (s["easy"], s["hard"], s["mixed"], s["mixed_share"]) == (1, 1, 3, pytest.approx(0.6))


def test_regression_predictions_are_left_out(tmp_path):
    d = tmp_path / "r" / "predictions"
    d.mkdir(parents=True)
    (d / "validation.jsonl").write_text('{"idx": 0, "label": 3.2, "prediction": 2.9}\n')
    assert easy_hard([tmp_path / "r"]) == {}


def test_analyze_reports_each_methods_best_config(tmp_path, cli):
    # method m: config "good" (mean 0.8) beats "bad" (0.4); the case study uses good's two seeds.
    write_run(tmp_path, "rte/m/good/seed-1", "ABBAA", seed=1, acc=0.7)
    write_run(tmp_path, "rte/m/good/seed-2", "AABBB", seed=2, acc=0.9)
    write_run(tmp_path, "rte/m/bad/seed-1", "BABAB", seed=1, acc=0.4)
    write_run(tmp_path, "rte/n/default/seed-1", "ABABA", method="n", acc=1.0)
    code, stdout, stderr = cli("analyze", tmp_path, "--format", "json")
    assert code == 0, stderr
    doc = json.loads(stdout)["tasks"]["rte"]
    assert doc["best"]["m"]["config"] == "good" and doc["best"]["m"]["mean"] == pytest.approx(0.8)
    assert doc["best"]["m"]["std"] == pytest.approx(0.1414213562)
    study = doc["case_study"]["methods"]
    assert study["m"]["config"] == "good" and study["m"]["seeds"] == 2
    assert (study["m"]["splits"]["validation"]["easy"], study["m"]["splits"]["validation"]["hard"]) == (1, 1)
    assert study["n"]["splits"]["validation"]["easy_share"] == 1.0
    code, stdout, _ = cli("analyze", tmp_path)
    assert code == 0 and "Case study" in stdout and "good" in stdout


def test_analyze_errors(tmp_path, cli):
    code, _, stderr = cli("analyze", tmp_path / "nope")
    assert code == 2 and "not a directory" in stderr
    code, _, stderr = cli("analyze", tmp_path)
    assert code == 2 and "no complete runs" in stderr
    write_run(tmp_path, "rte/m/x/seed-1", "AAAAA")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, _, stderr = cli("analyze", tmp_path, "--plot", tmp_path / "c.png")
        assert code == 2 and "pip install matplotlib" in stderr
    else:
        code, _, _ = cli("analyze", tmp_path, "--plot", tmp_path / "c.png")
        assert code == 0 and (tmp_path / "c.png").stat().st_size > 0
