"""`sftune plot`: curves read from metrics.jsonl, runs overlaid, a sweep's seeds as mean ± std."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def fake_run(path, seed, losses, metric):
    path.mkdir(parents=True)
    rows = []
    for i, loss in enumerate(losses, 1):
        rows.append({"type": "train", "step": 2 * i, "loss": loss, "lr": 1e-5 / i, "selected": 0.001 * seed,
                     "changed": 0.002})
    rows.append({"type": "eval", "step": 2 * len(losses), "validation/accuracy": metric})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "results.json").write_text(json.dumps({"main_metric": {"split": "validation", "name": "accuracy"}}))


def test_curves_mean_band_and_files(cli, tmp_path):
    from sftune.plots import _mean_band, curves, find_runs

    sweep = tmp_path / "sweep"
    fake_run(sweep / "full" / "lr1e-5" / "seed1", 1, [0.7, 0.6, 0.5], 0.6)
    fake_run(sweep / "full" / "lr1e-5" / "seed2", 2, [0.9, 0.8, 0.7], 0.7)
    fake_run(sweep / "bitfit" / "lr1e-5" / "seed1", 1, [0.7, 0.7, 0.7], 0.5)
    runs = find_runs([sweep])
    assert sorted({label for _, label in runs}) == ["bitfit/lr1e-5", "full/lr1e-5"] and len(runs) == 3
    c = curves(sweep / "full" / "lr1e-5" / "seed2")
    assert c["selected"][1].tolist() == [0.2, 0.2, 0.2]  # percentages, as on the screen
    assert c["metric"][0].tolist() == [6] and c["metric_name"] == "validation/accuracy"
    steps, mean, std = _mean_band([curves(sweep / "full" / "lr1e-5" / f"seed{s}")["loss"] for s in (1, 2)])
    assert steps.tolist() == [2, 4, 6]
    assert np.allclose(mean, [0.8, 0.7, 0.6]) and np.allclose(std, [0.1, 0.1, 0.1])

    code, stdout, stderr = cli("plot", sweep)
    assert code == 0, stderr
    assert (sweep / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "two.svg"
    assert cli("plot", sweep / "full" / "lr1e-5" / "seed1", sweep / "bitfit" / "lr1e-5" / "seed1", "-o", out)[0] == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "seed1" in svg


def test_bad_inputs(cli, tmp_path):
    code, _, stderr = cli("plot", tmp_path, "-o", tmp_path / "x.png")
    assert code == 2 and "no run directory" in stderr
    fake_run(tmp_path / "r", 1, [0.5], 0.5)
    code, _, stderr = cli("plot", tmp_path / "r", "-o", tmp_path / "x.gif")
    assert code == 2 and ".png, .svg or .pdf" in stderr
