"""The same run for longer: does a method that stays at the majority class leave it with more steps?

    python bench/quality/longer.py mrpc bitfit:3e-3 top:1e-3 --steps 600 --every 150 \
        --json docs/bench/mrpc-steps-minilm.json

When a cpu-long cell sits at the majority class, two explanations compete: the method needs more optimizer
steps than the profile gives it (a budget problem), or it cannot fit the task at all. This script tells them
apart by measurement: one `sftune train` per METHOD[:LR] with the profile's settings for TASK (held-out rows,
training subset, batch, warmup and decay, fixed options) except the step count, evaluated every `--every`
steps on dev and the held-out split. A method given without a rate runs at the rate the profile chose for it
(from the committed records). The JSON keeps each run's evaluations, its training loss every 50 steps and
the final predictions' ranking (dev/held-out ROC AUC, the most predicted label's share and probability
range): whether the scores move, and whether the ranking was already there while the threshold was not.

Run directories go to OUT/longer/TASK/METHOD-lrLR-seedN-STEPSsteps (OUT as in run.py); a finished run is
not run again (the JSON is rebuilt from its directory), an interrupted one resumes (`sftune train` does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]  # sftune; bench/common.py; run.py, staged.py
import staged  # noqa: E402
from run import ROOT, load_profile, staged_out  # noqa: E402

from common import env_for_runs  # noqa: E402
from sftune.artifacts import atomic_write_text, read_jsonl  # noqa: E402

LOSS_EVERY = 50  # training-loss samples kept in the JSON, every this many steps


def train_command(profile: dict, task: str, method: str, lr: float, seed: int, steps: int, every: int,
                  run_dir: Path, data_dir: str | None) -> list[str]:
    """The profile's main-setting run of METHOD on TASK, but STEPS long and evaluated every EVERY steps."""
    opts = staged.run_options(profile, "main", task)
    return ["sftune", "train", profile["model"], task, "--method", method, "--max-steps", str(steps),
            "--data-dir", data_dir or profile["data_dir"], "--output-dir", str(run_dir),
            # the profile evaluates once, after the last step; here every EVERY steps
            *staged.data_args(opts, skip=("train.eval_every=",)),
            "--set", f"train.eval_every={every}", "--set", f"train.lr={lr!r}", "--seed", str(seed)]


def status_of(run_dir: Path) -> str:
    """The run's results.json status ("complete", "interrupted", ...), or "missing" before it wrote one."""
    results = run_dir / "results.json"
    return json.loads(results.read_text()).get("status") if results.is_file() else "missing"


def summary(run_dir: Path, task: str, cmd: list[str]) -> dict:
    """What the JSON keeps of one run directory: status, evaluations, training loss, final ranking."""
    status = status_of(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    metric = staged.main_metric(task)
    evals = [{"step": r["step"], **{k: round(v, 4) for k, v in r.items()
                                    if k.endswith("/" + metric) and isinstance(v, float)}}
             for r in rows if r.get("type") == "eval"]
    loss = [[r["step"], round(r["loss"], 4)] for r in rows
            if r.get("type") == "train" and r.get("loss") is not None and r["step"] % LOSS_EVERY == 0]
    out = {"command": " ".join(cmd), "status": status, "evals": evals, "train_loss": loss}
    if status == "complete":
        out["ranking"] = staged.rankings_of(run_dir, task)
    return out


def key(run: dict) -> tuple:
    """A run's identity in the JSON: another method, rate, seed or length is another run."""
    return run["method"], run["lr"], run["seed"], run["steps"]


def parse_spec(spec: str, profile: dict, task: str) -> tuple[str, float]:
    method, _, lr = spec.partition(":")
    if lr:
        return method, float(lr)
    chosen = staged.chosen_lr(profile, staged.load_records(ROOT / profile["records"], profile), task, method)
    if chosen is None:
        sys.exit(f"error: {method}: the profile has not chosen its rate on {task} yet; give one as {method}:LR")
    return method, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task")
    ap.add_argument("methods", nargs="+", metavar="METHOD[:LR]")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--every", type=int, required=True, help="evaluate every this many steps")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", default="cpu-long")
    ap.add_argument("--out", default=None, help="run root (default: the profile's `out`, or SFTUNE_QUALITY_OUT)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", required=True, help="write the runs' summaries here (atomically, after each run; "
                    "the file's runs of other methods, rates, seeds or steps stay)")
    args = ap.parse_args()
    name, profile = load_profile(args.profile)
    if args.task not in profile["tasks"]:
        sys.exit(f"error: task {args.task}: not in profile {name} (its tasks: {', '.join(profile['tasks'])})")
    out = staged_out(args.out, profile) / "longer"
    env_for_runs(profile.get("threads", 1))
    what = (f"{args.task}, {profile['description']}: the profile's main-setting runs (its held-out rows, "
            f"training data, batch, schedule, fixed options) but each with its own step count, evaluated every "
            f"`every` steps on dev (validation) and the held-out split; one thread per run")
    path = Path(args.json)
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []  # other runs stay in the file
    failed = 0
    for spec in args.methods:
        method, lr = parse_spec(spec, profile, args.task)
        run_dir = out / args.task / f"{method}-lr{lr!r}-seed{args.seed}-{args.steps}steps"
        cmd = train_command(profile, args.task, method, lr, args.seed, args.steps, args.every, run_dir,
                            args.data_dir)
        rc = 0
        if status_of(run_dir) != "complete":
            # interrupted: continue from its checkpoint (sftune checks the options against the stored run)
            again = ["--resume"] if (run_dir / "config.yaml").is_file() else []
            print("$ " + " ".join(cmd + again), flush=True)
            rc = subprocess.call(cmd + again, stdout=subprocess.DEVNULL)
            if rc:
                print(f"   exit {rc}", flush=True)
        new = {"method": method, "lr": lr, "seed": args.seed, "steps": args.steps, "every": args.every,
               **summary(run_dir, args.task, cmd)}
        runs = [r for r in runs if key(r) != key(new)] + [new]
        atomic_write_text(path, json.dumps({"what": what, "runs": sorted(runs, key=key)}, indent=1) + "\n")
        last = new["evals"][-1] if new["evals"] else {}
        print(f"{method} lr {lr!r}: {new['status']}, " + ", ".join(f"{k} {v}" for k, v in last.items()), flush=True)
        if new["status"] != "complete":
            if rc in (2, 130):  # a bad option, or Ctrl-C: the other runs would meet the same
                sys.exit(rc)
            failed += 1  # recorded with its status; the other runs go on
    if failed:
        sys.exit(f"error: {failed} run(s) did not complete (their status is in {path})")


if __name__ == "__main__":
    main()
