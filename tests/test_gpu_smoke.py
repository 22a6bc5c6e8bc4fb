"""The GPU check's smoke script (bench/gpu/smoke.py), run on the CPU with a tiny model: every registered
method, both mask modes, fp32 and bf16 autocast, flat gradients forced on; and the checks catch planted
faults (an optimizer that ignores the update-mode mask, a gradient mask that is not applied)."""

import json
from pathlib import Path

import pytest

from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--shape", "tiny", "--steps", "3", "--flat-grads", "on"]


def load(name: str):
    return load_bench(f"gpu/{name}.py")


@pytest.fixture(scope="module")
def smoke():
    return load("smoke")


def run(smoke, tmp_path, *extra):
    out = tmp_path / "smoke.json"
    code = smoke.main([*TINY, "--json", str(out), *extra])
    return code, json.loads(out.read_text())


def test_every_method_mode_and_precision_passes_on_cpu(smoke, tmp_path, capsys):
    from sftune.registry import methods

    code, doc = run(smoke, tmp_path)
    assert code == 0, doc["failed"]
    cells = {(c["precision"], c["method"], c["mode"]): c for c in doc["cells"]}
    assert set(cells) == {(p, m, mode) for p in ("fp32", "bf16") for m in methods() for mode in ("grad", "update")}
    assert {c["mixed_precision"] for c in doc["cells"] if c["precision"] == "bf16"} == {"bf16"}
    for (precision, method, mode), c in cells.items():
        assert c["ok"] and len(c["losses"]) == 3
        # Flat gradients from the second step exactly for the methods whose selection is flat.
        assert [s["flat_used"] for s in c["steps"]] == [False] + [c["flat_capable"]] * 2
        assert all(d == "cpu" for d in c["generators"].values())
    assert cells[("fp32", "random", "update")]["steps"][0]["selected"] > 0
    # Grad mode leaves AdamW free to move unselected entries (weight decay): the counter does see changes.
    assert cells[("fp32", "random", "grad")]["steps"][0]["changed_outside_mask"] > 0
    dps = cells[("fp32", "dps-mix", "update")]["dps"]
    # U = int(6 steps planned * 0.25) = 1: Stage I, II, I again (dps-mix reads W0 back); CPU: chunked GAM update.
    assert dps["stage_two_steps"] == [2] and dps["multi_tensor_gam"] is False

    # The summary the device run writes: one table row per method, the pass count.
    capsys.readouterr()
    assert load("summarize").main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"{len(cells)}/{len(cells)} cells pass" in text
    assert all(f"| {m} | ok " in text for m in methods())


def test_update_mode_check_catches_an_optimizer_that_ignores_the_mask(smoke, tmp_path, monkeypatch):
    from sftune.optim.masked_adamw import MaskedAdamW

    monkeypatch.setattr(MaskedAdamW, "set_mask", lambda self, param, mask: None)
    code, doc = run(smoke, tmp_path, "--methods", "random", "--modes", "update", "--precisions", "fp32")
    assert code == 1
    assert any("unselected entries" in f for f in doc["cells"][0]["failures"])


def test_gradient_check_catches_an_unapplied_flat_selection(smoke, tmp_path, monkeypatch):
    from sftune.methods.masking import FlatIndices

    monkeypatch.setattr(FlatIndices, "apply_", lambda self, flat_grad: None)
    code, doc = run(smoke, tmp_path, "--methods", "top", "--modes", "grad", "--precisions", "fp32")
    assert code == 1
    assert any("outside the masks" in f for f in doc["cells"][0]["failures"])
