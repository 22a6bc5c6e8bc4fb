"""The staged quality protocol (bench/quality/staged.py, claims.py) on synthetic run trees: grid, choice on
the held-out split, seeds at the chosen rate, records that let a fresh machine skip finished runs, claims."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUALITY = ROOT / "bench" / "quality"


def _load(name):
    sys.path.insert(0, str(QUALITY))
    spec = importlib.util.spec_from_file_location(name, QUALITY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def staged():
    return _load("staged")


@pytest.fixture(scope="module")
def claims(staged):
    return _load("claims")


PROFILE = {"model": "minilm", "data_dir": "/data", "seeds": 3, "records": "records",
           "tasks": {"mrpc": {"heldout": 40, "train_size": 100, "steps": 20}},
           "settings": {"main": {}, "lowres": {"train_size": 50, "tasks": ["mrpc"], "methods": ["dps-mix", "full"]}},
           "groups": {"dense": {"lr_grid": [1e-5, 1e-4], "methods": ["full", "dps-mix"]},
                      "sparse": {"lr_grid": [1e-3], "methods": ["bitfit"]}},
           "waves": [["full", "bitfit"], ["dps-mix"]], "set": ["train.eval_every=1000"]}
HELD = {("full", 1e-5): 0.70, ("full", 1e-4): 0.80, ("dps-mix", 1e-5): 0.75, ("dps-mix", 1e-4): 0.72,
        ("bitfit", 1e-3): 0.60}


def fake_sweep(calls):
    """Stands in for `sftune sweep`: writes a complete run directory per (method, lr, seed) it is given."""

    def call(cmd):
        calls.append(cmd)
        arg = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
        out, task = Path(arg("--output-dir")), cmd[3]
        sets = dict(s.split("=", 1) for i, s in enumerate(cmd) if i and cmd[i - 1] == "--set")
        size = int(arg("--train-size")) if "--train-size" in cmd else None
        for method in arg("--method").split(","):
            for lr in map(float, arg("--grid").removeprefix("train.lr=").split(",")):
                for seed in map(int, arg("--seed-list").split(",")):
                    run = out / task / method / f"lr={lr!r}" / f"seed-{seed}"
                    run.mkdir(parents=True)
                    (run / "model").mkdir()
                    dev = HELD[(method, lr)] + 0.01 * seed + (0.005 * seed if method == "dps-mix" else 0)
                    (run / "results.json").write_text(json.dumps({
                        "status": "complete", "task": task, "method": method, "seed": seed, "n_train": size or 999,
                        "train_seconds": 10.0, "metrics": {"validation": {"f1": dev, "accuracy": dev},
                                                           "heldout": {"f1": HELD[(method, lr)]}}}))
                    (run / "config.yaml").write_text(yaml.safe_dump({
                        "train": {"lr": lr, "max_steps": int(arg("--max-steps"))},
                        "data": {"train_size": size,
                                 "validation_from_train": int(sets["data.validation_from_train"])}}))
                    (run / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "loss": x}) + "\n"
                                                               for x in (0.7, 0.6, 0.5, 0.4, 0.3)))
                    (run / "manifest.json").write_text(json.dumps({
                        "git_commit": "abc1234def", "timings": {"wall_seconds_this_session": 12.0,
                                                                "finished": "2026-12-06T18:00:00"}}))
        return 0

    return call


def test_grid_then_seeds_at_the_chosen_rate_and_resume_from_records(staged, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(staged, "call", fake_sweep(calls))
    out, records = tmp_path / "out", tmp_path / "records"
    staged.run(PROFILE, out, records, jobs=1, methods=["full", "bitfit"], data_dir=None)
    known = staged.load_records(records, PROFILE)
    # full: grid at 1e-5 and 1e-4 (seed 1), held-out picks 1e-4, then seeds 2, 3 there (seed 1 reused)
    assert staged.chosen_lr(PROFILE, known, "mrpc", "full") == 1e-4
    assert {k[3:] for k in known if k[:3] == ("main", "mrpc", "full")} == {(1e-5, 1), (1e-4, 1), (1e-4, 2), (1e-4, 3)}
    assert {k[3:] for k in known if k[:3] == ("main", "mrpc", "bitfit")} == {(1e-3, 1), (1e-3, 2), (1e-3, 3)}
    assert {k[3:] for k in known if k[:3] == ("lowres", "mrpc", "full")} == {(1e-4, 1), (1e-4, 2), (1e-4, 3)}
    assert not any(k[2] == "dps-mix" for k in known)  # not asked for this time
    assert "--seed-list" in calls[0] and calls[0][calls[0].index("--seed-list") + 1] == "1"
    assert not list(out.glob("**/model"))  # pruned once recorded
    rec = json.loads((records / "mrpc.jsonl").read_text().splitlines()[0])
    assert rec["run"] == {"train_size": 100, "heldout": 40, "steps": 20, "set": ["train.eval_every=1000"]}
    assert rec["commit"] == "abc1234def" and rec["wall_seconds"] == 12.0
    assert rec["loss_first"] == 0.7 and rec["loss_last"] == pytest.approx(0.4)

    # a fresh machine: no run directories, only the committed records; nothing of full/bitfit runs again
    calls.clear()
    staged.run(PROFILE, tmp_path / "fresh", records, jobs=2, methods=None, data_dir=None)
    assert calls and all(c[c.index("--method") + 1] == "dps-mix" for c in calls)
    known = staged.load_records(records, PROFILE)
    assert staged.chosen_lr(PROFILE, known, "mrpc", "dps-mix") == 1e-5
    assert len([k for k in known if k[0] == "lowres"]) == 6
    calls.clear()
    staged.run(PROFILE, tmp_path / "fresh", records, jobs=2, methods=None, data_dir=None)
    assert calls == []  # everything recorded
    changed = {**PROFILE, "tasks": {"mrpc": {**PROFILE["tasks"]["mrpc"], "steps": 30}}}
    assert staged.load_records(records, changed) == {}  # records of other steps do not count
    # ... and their runs go to a folder of their own: `sftune sweep` refuses a run directory of other options
    old, new = (staged.sweep_dir(p, out, "main", "mrpc") for p in (PROFILE, changed))
    assert new != old and new.parent == old.parent and new.name.startswith("30steps-")
    assert (old / "mrpc" / "full").is_dir() and not new.exists()


def test_missing_runs_become_few_sweeps(staged):
    sweeps = staged.group_missing({"a": {(1e-5, 1), (1e-4, 1)}, "b": {(1e-5, 1), (1e-4, 1)},
                                   "c": {(1e-4, 2), (1e-4, 3), (1e-5, 1)}, "d": set()})
    assert (["a", "b"], [1e-5, 1e-4], [1]) in sweeps
    assert (["c"], [1e-5], [1]) in sweeps and (["c"], [1e-4], [2, 3]) in sweeps and len(sweeps) == 3


def test_paired_interval_and_verdicts(claims):
    # differences 1, 2, 3, 2, 2: mean 2, sd sqrt(0.5), t(0.975, 4) = 2.776 -> half width 2.776 * 0.7071 / sqrt(5)
    a, b = [51.0, 52.0, 53.0, 52.0, 52.0], [50.0] * 5
    c = claims.compare(a, b, "better")
    half = 2.7764451 * math.sqrt(0.5) / math.sqrt(5)
    assert c["mean"] == pytest.approx(2.0) and c["lo"] == pytest.approx(2 - half, abs=1e-6)
    assert c["verdict"] == "holds"
    assert claims.compare(b, a, "better")["verdict"] == "reversed"
    assert claims.compare([50.0, 52.0, 49.0], [50.5, 50.0, 51.0], "better")["verdict"] == "not shown"
    assert claims.compare([49.5, 49.6, 49.4], [50.0, 50.0, 50.0], "on par")["verdict"] == "holds"  # -0.5 > -1
    assert claims.compare([45.0, 45.5, 44.5], [50.0, 50.0, 50.0], "on par")["verdict"] == "reversed"
    steady = claims.compare([50.0, 50.1, 49.9, 50.0, 50.05], [45.0, 55.0, 48.0, 53.0, 50.0], "steadier")
    assert steady["verdict"] == "holds" and steady["p"] < 0.05
    assert claims.compare([45.0, 55.0, 48.0, 53.0, 50.0], [50.0, 50.1, 49.9, 50.0, 50.05],
                          "steadier")["verdict"] == "reversed"


def test_report_from_records_alone(staged, claims, tmp_path, monkeypatch):
    monkeypatch.setattr(staged, "call", fake_sweep([]))
    records = tmp_path / "records"
    staged.run(PROFILE, tmp_path / "out", records, jobs=1, methods=None, data_dir=None)
    known = staged.load_records(records, PROFILE)
    majority = {"mrpc": {"f1": 0.812, "accuracy": 0.684}}
    text = claims.report("cpu-long", {**PROFILE, "records": "records"}, known, majority, None, "cmd")
    assert "| majority class | 81.2 | — |" in text
    assert "| full | 82.0 ± 1.0 (3) @0.0001 | 1 of 1 |" in text  # dev 0.80 + 0.01 * seed
    assert "| bitfit | 62.0 ± 1.0 (3) @0.001 | 0 of 1 |" in text
    assert "dps-mix on mrpc (loss 0.700 -> 0.400); bitfit on mrpc (loss 0.700 -> 0.400)." in text
    assert "**1e-05: 70.0**" not in text and "**0.0001: 80.0**" in text  # the held-out choice, in bold
    # dps-mix (lr 1e-5) vs full (1e-4): dev 0.75 + 0.015 s vs 0.80 + 0.01 s -> -5 + 0.5 s: -4.0 [...] reversed
    assert "| DPS: Mix above vanilla fine-tuning (dps-mix vs full, better) | -4.00 [" in text
    assert "| mrpc | 78.0 ± 1.5 (3) | 82.0 ± 1.0 (3) | -4.00 [" in text  # low-resource: dps-mix, full
    assert "records: 17 runs" in text and "run time summed over runs (one thread each): 0.06 h" in text


def test_figure_of_methods_by_task(staged, claims, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(staged, "call", fake_sweep([]))
    records = tmp_path / "records"
    staged.run(PROFILE, tmp_path / "out", records, jobs=1, methods=None, data_dir=None)
    known = staged.load_records(records, PROFILE)
    png = tmp_path / "docs" / "fig.png"
    text = claims.report("cpu-long", PROFILE, known, {"mrpc": {"f1": 0.812}}, png, "cmd")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![dev scores per method and task](fig.png)" in text


def test_a_failed_sweep_does_not_stop_the_other_cells(staged, tmp_path, monkeypatch):
    calls, ok = [], fake_sweep([])

    def flaky(cmd):  # bitfit's sweeps fail (nothing written), the others work
        calls.append(cmd)
        return 1 if "bitfit" in cmd[cmd.index("--method") + 1] else ok(cmd)

    monkeypatch.setattr(staged, "call", flaky)
    with pytest.raises(SystemExit) as e:
        staged.run(PROFILE, tmp_path / "out", tmp_path / "rec", jobs=1, methods=None, data_dir=None)
    assert e.value.code == 1
    known = staged.load_records(tmp_path / "rec", PROFILE)
    assert not any(k[2] == "bitfit" for k in known) and len([k for k in known if k[2] == "dps-mix"]) == 7
    assert sum("bitfit" in c[c.index("--method") + 1] for c in calls) == 3  # tried, then retried twice


def _predictions(run, rows):
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "validation.jsonl").write_text(
        "".join(json.dumps({"label": y, "prediction": "x", "probabilities": [1 - p, p]}) + "\n" for y, p in rows))


def test_prediction_ranking_by_hand(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from common import prediction_ranking

    run = tmp_path / "run"
    # P(equivalent): gold pairs (equivalent > not_equivalent): 0.9>0.8, 0.9>0.2, 0.7<0.8, 0.7>0.2 -> AUC 3/4
    _predictions(run, [("equivalent", 0.9), ("not_equivalent", 0.8), ("equivalent", 0.7), ("not_equivalent", 0.2)])
    r = prediction_ranking(run / "predictions" / "validation.jsonl", ("not_equivalent", "equivalent"))
    assert r == {"auc": 0.75, "top_label": "equivalent", "top_share": 0.75, "top_p": [0.2, 0.9]}
    run2 = tmp_path / "run2"
    _predictions(run2, [("equivalent", 0.9), ("equivalent", 0.6)])  # one gold label: AUC undefined
    assert prediction_ranking(run2 / "predictions" / "validation.jsonl", ("not_equivalent", "equivalent")) is None
    assert prediction_ranking(tmp_path / "missing.jsonl", ("a", "b")) is None


def test_records_get_the_ranking_and_ties_go_to_the_better_heldout_auc(staged, tmp_path, monkeypatch):
    monkeypatch.setattr(staged, "call", fake_sweep([]))
    out, records = tmp_path / "out", tmp_path / "records"
    staged.run(PROFILE, out, records, jobs=1, methods=["full"], data_dir=None)
    # the runs wrote no predictions: no ranking; now give seed 1's runs predictions, as older records lacked them
    for lr, p_good in (("1e-05", 0.9), ("0.0001", 0.6)):
        run = staged.sweep_dir(PROFILE, out, "main", "mrpc") / "mrpc" / "full" / f"lr={lr}" / "seed-1"
        _predictions(run, [("equivalent", p_good), ("not_equivalent", 0.7), ("equivalent", 0.8)])
    path = records / "mrpc.jsonl"
    other = json.dumps({"setting": "main", "task": "mrpc", "method": "full", "lr": 1e-5, "seed": 1,
                        "run": {"steps": 999}, "metrics": {}}, sort_keys=True)
    path.write_text(path.read_text() + other + "\n")  # a record of another profile: kept as it is
    before = path.read_text().splitlines()
    assert staged.harvest(out, records, PROFILE, {}, prune=False) == 0
    after = path.read_text().splitlines()
    assert len(after) == len(before) and after[-1] == other
    changed = [json.loads(b) for a, b in zip(before, after) if a != b]
    assert {(r["lr"], r["seed"]) for r in changed} == {(1e-5, 1), (1e-4, 1)}
    by_lr = {r["lr"]: r["ranking"]["validation"]["auc"] for r in changed}
    assert by_lr == {1e-5: 1.0, 1e-4: 0.5}  # 0.9, 0.8 > 0.7; 0.6 < 0.7 < 0.8
    assert staged.harvest(out, records, PROFILE, {}, prune=False) == 0 and path.read_text().splitlines() == after

    # the choice: a tie on the held-out metric goes to the better held-out AUC, else to the grid's first rate
    def rec(held, auc=None):
        r = {"task": "mrpc", "metrics": {"heldout": {"f1": held}}}
        return {**r, "ranking": {"heldout": {"auc": auc}}} if auc is not None else r

    low, high = ("main", "mrpc", "full", 1e-5, 1), ("main", "mrpc", "full", 1e-4, 1)
    assert staged.chosen_lr(PROFILE, {low: rec(0.81, 0.55), high: rec(0.81, 0.70)}, "mrpc", "full") == 1e-4
    assert staged.chosen_lr(PROFILE, {low: rec(0.82, 0.50), high: rec(0.81, 0.70)}, "mrpc", "full") == 1e-5
    assert staged.chosen_lr(PROFILE, {low: rec(0.81), high: rec(0.81)}, "mrpc", "full") == 1e-5


def test_why_a_cell_is_below_the_majority(claims):
    def rec(seed, auc, top):
        return {"task": "mrpc", "loss_first": 0.69, "loss_last": 0.6, "seed": seed,
                "ranking": {"validation": {"auc": auc, "top_label": "equivalent", "top_share": 1.0, "top_p": top}}}

    why = claims._why({1: rec(1, 0.70, [0.55, 0.8]), 2: rec(2, 0.72, [0.52, 0.7])})
    assert why == " (loss 0.690 -> 0.600; dev AUC 0.71 ± 0.01; 100% predicted 'equivalent' (p 0.52-0.80))"


def test_cells_in_running_order_and_only_the_tasks_asked_for(staged):
    profile = {**PROFILE, "tasks": {"sst2": {}, "mrpc": {}}}
    assert staged.cells(profile, None) == [("main", "sst2", ["full", "bitfit"]), ("main", "mrpc", ["full", "bitfit"]),
                                           ("lowres", "mrpc", ["full"]), ("main", "sst2", ["dps-mix"]),
                                           ("main", "mrpc", ["dps-mix"]), ("lowres", "mrpc", ["dps-mix"])]
    assert staged.cells(profile, ["dps-mix"], ["sst2"]) == [("main", "sst2", ["dps-mix"])]
    assert staged.cells(profile, None, ["mrpc"])[0] == ("main", "mrpc", ["full", "bitfit"])
