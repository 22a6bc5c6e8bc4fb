"""Staged quality protocol (profile `cpu-long`): learning rate chosen on a held-out split, then seeds.

For every setting (the main one and a low-resource one), task and method:

  1. grid:  one run per learning rate of the method's group, seed 1, scored on `heldout` (examples carved
            from the training data with data.validation_from_train, never dev);
  2. final: seeds 1..N at the learning rate with the best held-out main metric (seed 1 is the grid's run).

Runs are ordinary `sftune sweep`s into OUT/SETTING/TASK (outside the repository by default: run directories
are large and sessions lay the work tree anew). Every finished run is also written as one compact record
(task, method, lr, seed, metrics, steps, times, commit) to RECORDS/TASK.jsonl, which is committed: a later
session, even on a fresh machine, skips every recorded run, and the report is rebuilt from the records alone.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/common.py
from common import append_record, prediction_ranking, train_loss  # noqa: E402
from sftune.artifacts import atomic_write_text, read_jsonl  # noqa: E402

HELDOUT = "heldout"


# ------------------------------------------------------------------------------------------------ records
def record_key(r: dict) -> tuple:
    return (r["setting"], r["task"], r["method"], float(r["lr"]), int(r["seed"]))


def load_records(records: Path, profile: dict) -> dict[tuple, dict]:
    """Recorded runs that match the profile's current settings (size, steps, held-out count); others are
    ignored, so a changed profile reruns what it changed."""
    found = {}
    for path in sorted(records.glob("*.jsonl")):
        for r in read_jsonl(path):
            if (r["setting"] in profile["settings"] and r["task"] in profile["tasks"]
                    and r["run"] == run_options(profile, r["setting"], r["task"])):
                found[record_key(r)] = r
    return found


def run_options(profile: dict, setting: str, task: str) -> dict:
    """What a run's record must share with the profile to count: sizes, steps and the fixed options."""
    t, s = profile["tasks"][task], profile["settings"][setting]
    return {"train_size": s.get("train_size", t.get("train_size")), "heldout": t["heldout"],
            "steps": s.get("steps", t["steps"]), "set": list(profile.get("set") or [])}


def harvest(out: Path, records: Path, profile: dict, known: dict[tuple, dict], prune: bool) -> int:
    """Append a record for every complete run under OUT not recorded yet; returns how many were added."""
    known.update(load_records(records, profile))  # another process may have recorded some meanwhile
    added, rankings = 0, {}
    # OUT/SETTING/TASK/[OPTIONS/]TASK/METHOD/lr=X/seed-N (runs of the first sessions lack the OPTIONS level)
    for path in sorted(out.glob("*/*/**/seed-*/results.json")):
        setting, task = path.relative_to(out).parts[:2]
        if setting not in profile["settings"] or task not in profile["tasks"]:
            continue
        res = json.loads(path.read_text())
        if res.get("status") != "complete":
            continue
        cfg = _yaml(path.parent / "config.yaml")
        manifest = json.loads((path.parent / "manifest.json").read_text())
        rec = {"setting": setting, "task": task, "method": res["method"], "lr": cfg["train"]["lr"],
               "seed": res["seed"], "run": run_options(profile, setting, task), "metrics": res["metrics"],
               "n_train": res["n_train"], "train_seconds": round(res["train_seconds"], 1),
               "wall_seconds": round(manifest["timings"].get("wall_seconds_this_session", 0.0), 1),
               "commit": manifest.get("git_commit"), "finished": manifest["timings"].get("finished"),
               "steps_done": res.get("steps"), **train_loss(path.parent / "metrics.jsonl")}
        if (cfg["data"]["train_size"], cfg["data"]["validation_from_train"], cfg["train"]["max_steps"]) != (
                rec["run"]["train_size"], rec["run"]["heldout"], rec["run"]["steps"]):
            continue  # a run of an older profile left in OUT
        key = record_key(rec)
        if key not in known or "ranking" not in known[key]:  # the predictions are read only when needed
            ranking = rankings_of(path.parent, task)
            if ranking:
                rec["ranking"] = ranking
            if key not in known:
                append_record(records / f"{task}.jsonl", rec)
                known[key] = rec
                added += 1
            elif ranking:
                rankings[key] = rec  # recorded before records kept the ranking: added below
        if prune and (path.parent / "model").is_dir():
            shutil.rmtree(path.parent / "model")  # 88 MB per MiniLM run; the record keeps what the report reads
    if rankings:
        add_rankings(records, rankings, known)
    return added


def rankings_of(run: Path, task: str) -> dict:
    """The prediction ranking (common.prediction_ranking) of each split the run wrote predictions for."""
    from sftune.tasks import get_task

    names = get_task(task).label_names
    found = {p.stem: prediction_ranking(p, names) for p in sorted((run / "predictions").glob("*.jsonl"))}
    return {split: r for split, r in found.items() if r}


def add_rankings(records: Path, updates: dict[tuple, dict], known: dict[tuple, dict]) -> None:
    """Give records written before they kept `ranking` the one their run directory still holds: each
    affected file is rewritten whole (atomically), every other line unchanged. Not meant to run beside
    another process appending to the same records folder (both harvest; the rewrite could drop its line)."""
    for task in sorted({k[1] for k in updates}):
        path = records / f"{task}.jsonl"
        lines = read_jsonl(path)
        for r in lines:
            new = updates.get(record_key(r))
            if new and "ranking" not in r and r["run"] == new["run"]:
                r["ranking"] = new["ranking"]
                known[record_key(r)] = r
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------- the plan
def main_metric(task: str) -> str:
    from sftune.tasks import get_task

    return get_task(task).main_metric


def score(rec: dict, split: str) -> float:
    v = rec["metrics"].get(split, {}).get(main_metric(rec["task"]))
    return v if v is not None and math.isfinite(v) else -math.inf


def chosen_lr(profile: dict, known: dict, task: str, method: str) -> float | None:
    """The grid learning rate with the best held-out score of seed 1 in the main setting (None until every
    grid run is recorded). Ties (typically every rate at the majority class, e.g. MRPC's F1 of predicting
    "equivalent" throughout) go to the better held-out ranking AUC, still held-out data and threshold-free,
    then to the first rate of the grid."""
    grid = group_of(profile, method)["lr_grid"]
    recs = [known.get(("main", task, method, float(lr), 1)) for lr in grid]
    if any(r is None for r in recs):
        return None
    best = max(range(len(grid)), key=lambda i: (score(recs[i], HELDOUT), heldout_auc(recs[i]), -i))
    return float(grid[best])


def heldout_auc(rec: dict) -> float:
    auc = rec.get("ranking", {}).get(HELDOUT, {}).get("auc")
    return auc if auc is not None else -math.inf


def group_of(profile: dict, method: str) -> dict:
    for g in profile["groups"].values():
        if method in g["methods"]:
            return g
    raise KeyError(method)


def wanted(profile: dict, known: dict, setting: str, task: str, method: str) -> list[tuple[float, int]]:
    """(lr, seed) runs the protocol needs now for this cell; the final seeds wait for the grid."""
    seeds = list(range(1, profile["seeds"] + 1))
    if setting == "main":
        grid = [(float(lr), 1) for lr in group_of(profile, method)["lr_grid"]]
        lr = chosen_lr(profile, known, task, method)
        return grid + ([(lr, s) for s in seeds] if lr is not None else [])
    lr = chosen_lr(profile, known, task, method)  # other settings reuse the main setting's choice
    return [(lr, s) for s in seeds] if lr is not None else []


def group_missing(missing: dict[str, set[tuple[float, int]]]) -> list[tuple[list[str], list[float], list[int]]]:
    """Missing runs as few sweeps as possible: methods with the same missing (lr, seed) set share a sweep
    when the set is a product of rates and seeds, else one sweep per rate."""
    by_set = collections.defaultdict(list)
    for method, runs in missing.items():
        if runs:
            by_set[frozenset(runs)].append(method)
    sweeps = []
    for runs, methods in by_set.items():
        lrs = sorted({lr for lr, _ in runs})
        seeds = sorted({s for _, s in runs})
        if set(itertools.product(lrs, seeds)) == set(runs):
            sweeps.append((methods, lrs, seeds))
        else:
            for lr in lrs:
                sweeps.append((methods, [lr], sorted(s for x, s in runs if x == lr)))
    return sweeps


def sweep_dir(profile: dict, out: Path, setting: str, task: str) -> Path:
    """Where a cell's sweep runs: one folder per set of run options (steps, sizes, fixed --set items), so a
    changed profile starts its runs beside the old ones instead of meeting a run directory made with other
    options (which `sftune sweep` refuses to overwrite, rightly)."""
    opts = run_options(profile, setting, task)
    digest = hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]
    return out / setting / task / f"{opts['steps']}steps-{digest}"


def sweep_command(profile: dict, out: Path, setting: str, task: str, methods: list[str], lrs: list[float],
                  seeds: list[int], jobs: int, data_dir: str | None) -> list[str]:
    opts = run_options(profile, setting, task)
    return ["sftune", "sweep", profile["model"], task, "--method", ",".join(methods),
            "--grid", "train.lr=" + ",".join(repr(x) for x in lrs),
            "--seed-list", ",".join(map(str, seeds)), "--jobs", str(jobs),
            "--output-dir", str(sweep_dir(profile, out, setting, task)), "--data-dir", data_dir or profile["data_dir"],
            "--max-steps", str(opts["steps"]), *data_args(opts)]


def data_args(opts: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """The arguments (for `sftune sweep` or `train`) that make a run the profile's: its held-out rows, training
    subset and fixed --set items (leaving out those that start with one of SKIP)."""
    args = ["--set", f"data.validation_from_train={opts['heldout']}"]
    if opts["train_size"]:
        args += ["--train-size", str(opts["train_size"]), "--stratified"]
    for item in opts["set"]:
        if not item.startswith(skip):
            args += ["--set", item]
    return args


def cells(profile: dict, methods: list[str] | None,
          tasks: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """(setting, task, methods) in running order: each wave's main setting task by task, then the wave's
    other settings (they need the main setting's choice); only METHODS and TASKS when given."""
    out = []
    for wave in profile["waves"]:
        ms = [m for m in wave if methods is None or m in methods]
        if not ms:
            continue
        for task in profile["tasks"]:
            out.append(("main", task, ms))
        for setting, s in profile["settings"].items():
            if setting != "main":
                for task in s["tasks"]:
                    out.append((setting, task, [m for m in ms if m in s["methods"]]))
    return [c for c in out if c[2] and (tasks is None or c[1] in tasks)]


def call(cmd: list[str]) -> int:
    """Run one sweep; on Ctrl-C (which the sweep and its runs get too: they checkpoint and stop) wait for it."""
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        return 130


def run(profile: dict, out: Path, records: Path, jobs: int, methods: list[str] | None, data_dir: str | None,
        dry_run: bool = False, prune: bool = True, tasks: list[str] | None = None) -> None:
    known = load_records(records, profile)
    if out.is_dir():
        print(f"recorded {harvest(out, records, profile, known, prune)} finished run(s) found in {out}", flush=True)
    failed = []
    for setting, task, ms in cells(profile, methods, tasks):
        for _ in range(3):  # the grid, then the seeds at the chosen rate; a third pass retries failed runs once
            missing = {m: set(wanted(profile, known, setting, task, m)) - {k[3:] for k in known
                                                                          if k[:3] == (setting, task, m)}
                       for m in ms}
            sweeps = group_missing(missing)
            if not sweeps:
                break
            for s_methods, lrs, seeds in sweeps:
                cmd = sweep_command(profile, out, setting, task, s_methods, lrs, seeds, jobs, data_dir)
                print(f"== {setting}/{task}: {shlex.join(cmd)}", flush=True)
                if dry_run:
                    continue
                t0 = time.time()
                rc = call(cmd)
                n = harvest(out, records, profile, known, prune)
                print(f"   exit {rc}, {n} run(s) recorded, {time.time() - t0:.0f} s", flush=True)
                if rc in (2, 130):
                    sys.exit(rc)
                if rc != 0:  # a failed run stays missing: the other cells go on, a rerun tries it again
                    where = sweep_dir(profile, out, setting, task)
                    failed.append(f"{setting}/{task} {','.join(s_methods)}: see {where}/summary.json")
            if dry_run:
                break
    if failed:
        print("runs failed (rerun the command to try them again):\n  " + "\n  ".join(failed), flush=True)
        sys.exit(1)

