"""Quality benchmark: every method on real GLUE data, mean ± std over seeds, against a majority-class row.

    python bench/quality/run.py cpu --write docs/results.md      # MiniLM, offline, ~2 h on 2 cores
    python bench/quality/run.py gpu --write docs/results.md      # the papers' protocol (Hub or local paths)
    python bench/quality/run.py cpu --dry-run                    # the sweeps it would run
    python bench/quality/run.py cpu --report-only --write docs/results.md   # tables from the runs on disk
    python bench/quality/run.py cpu-long --write docs/results.md # staged protocol (staged.py, claims.py)

A profile (`bench/quality/PROFILE.yaml`, or a path) names the model(s), tasks (with their training-subset
size and epochs), method groups (each with its learning rate), seeds and parallel jobs. One group may say
`methods: rest`: every registered method that no other group and no `skip` entry names, so a new method is
benchmarked without editing a profile. For every model, task and group the script runs one ordinary
`sftune sweep` into `OUT/MODEL/TASK/GROUP`; a sweep resumes where it stopped, so rerunning the command after an
interruption finishes the work and rewrites the same tables.

The report reads every run's `results.json` under OUT, groups them by model, task and method, and prints the
task's main metric as mean ± sample std (n seeds). The majority-class row predicts the training set's most
frequent label for every dev example and scores it with the same metric code. `--write FILE` replaces the
block between `<!-- quality:PROFILE:start -->` and `<!-- quality:PROFILE:end -->` in FILE (appends it when
missing), so hand-written text around it stays.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # staged.py and claims.py next to this script; bench/common.py
from common import ROOT, env_for_runs, hardware, read_profile, short_commit, write_block  # noqa: E402
from sftune.artifacts import atomic_write_text  # noqa: E402

REST = "rest"  # a group's `methods: rest`: every registered method that neither another group nor `skip` names


def load_profile(name: str) -> tuple[str, dict]:
    path, profile = read_profile(HERE, name, "cpu, gpu")
    return path.stem, resolve_methods(profile, path.name)


def resolve_methods(profile: dict, where: str = "the profile") -> dict:
    """The profile's method lists, completed from the registry: the group whose `methods` is `rest` gets every
    registered method that no other group and no `skip` entry names, so a new method is benchmarked without
    editing a profile (a staged profile runs those in one more wave, after its own). A group left empty is
    dropped. Names that are not registered methods are refused (a renamed method would fail every sweep)."""
    from sftune.registry import method_names

    registered = method_names()
    groups = profile["groups"]
    rest = [k for k, g in groups.items() if g["methods"] == REST]
    if len(rest) > 1:
        sys.exit(f"error: {where}: groups {', '.join(rest)} all say `methods: {REST}`; at most one group may")
    named = [m for g in groups.values() if g["methods"] != REST for m in g["methods"]]
    unknown = sorted(set(named + list(profile.get("skip") or [])) - set(registered))
    if unknown:
        sys.exit(f"error: {where} names {', '.join(unknown)}, not registered methods; "
                 f"'sftune methods' lists them")
    for key in rest:
        groups[key]["methods"] = [m for m in registered if m not in named and m not in (profile.get("skip") or [])]
    for key in [k for k, g in groups.items() if not g["methods"]]:
        del groups[key]
    if "waves" in profile:
        waved = {m for w in profile["waves"] for m in w}
        extra = [m for g in groups.values() for m in g["methods"] if m not in waved]
        if extra:
            profile["waves"].append(extra)
    return profile


def sweep_commands(profile: dict, out: Path, model_override: str | None, data_dir: str | None) -> list[dict]:
    """One `sftune sweep` command line per (model, task, method group)."""
    models = [model_override] if model_override else profile["model"]
    models = models if isinstance(models, list) else [models]
    data_dir = data_dir or profile.get("data_dir")
    sweeps = []
    for model in models:
        for task, opts in profile["tasks"].items():
            for group, g in profile["groups"].items():
                tag = Path(model).name
                cmd = ["sftune", "sweep", model, task, "--method", ",".join(g["methods"]),
                       "--seeds", str(profile.get("seeds", 3)), "--jobs", str(profile.get("jobs", 1)),
                       "--output-dir", str(out / tag / task / group)]
                if data_dir:
                    cmd += ["--data-dir", data_dir]
                if profile.get("preset"):
                    cmd += ["--preset", profile["preset"]]
                if opts.get("train_size"):
                    cmd += ["--train-size", str(opts["train_size"]), "--stratified"]
                if opts.get("epochs"):
                    cmd += ["--epochs", str(opts["epochs"])]
                if g.get("lr") is not None:
                    cmd += ["--lr", str(g["lr"])]
                for item in list(profile.get("set") or []) + list(g.get("set") or []):
                    cmd += ["--set", item]
                sweeps.append({"key": f"{tag}/{task}/{group}", "cmd": cmd})
    return sweeps


def run_sweeps(sweeps: list[dict], out: Path) -> None:
    """Run each sweep in turn; the wall time of each is added to OUT/wall.json (reruns accumulate)."""
    wall_file = out / "wall.json"
    out.mkdir(parents=True, exist_ok=True)
    walls = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    for s in sweeps:
        print(f"== {s['key']}: {shlex.join(s['cmd'])}", flush=True)
        t0 = time.time()
        try:
            rc = subprocess.call(s["cmd"])
        finally:  # an interrupted sweep's time counts too
            walls[s["key"]] = walls.get(s["key"], 0.0) + time.time() - t0
            atomic_write_text(wall_file, json.dumps(walls, indent=1))
        if rc == 130:
            sys.exit(130)
        if rc != 0:
            print(f"   sweep {s['key']} exited {rc}; its failed runs are listed in its summary", flush=True)


# ----------------------------------------------------------------------------------------------- report
def collect(out: Path) -> dict[tuple[str, str, str], list[dict]]:
    """(model, task, method) -> the results.json of every complete run under OUT."""
    found = collections.defaultdict(list)
    for path in sorted(out.glob("**/results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "complete":
            continue
        model = path.relative_to(out).parts[0]
        found[(model, r["task"], r["method"])].append(r)
    return found


def majority_scores(tasks: list[str], data_dir: str | None) -> dict[str, dict[str, float]]:
    """Each task's metrics when every dev example gets the training set's most frequent label."""
    from sftune.config import DataConfig
    from sftune.data import load_splits
    from sftune.metrics import compute
    from sftune.tasks import get_task

    scores = {}
    for name in tasks:
        task = get_task(name)
        splits = load_splits(task, DataConfig(data_dir=data_dir))
        dev = splits.evals[task.eval_splits[0]]
        if task.is_regression:  # a constant prediction has no correlation: report 0, as the tables do
            scores[name] = {m: 0.0 for m in task.metrics}
            continue
        label = collections.Counter(splits.train["label"]).most_common(1)[0][0]
        scores[name] = compute(task.metrics, [label] * len(dev), list(dev["label"]))
    return scores


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f} ({len(values)})"


def report(profile_name: str, profile: dict, out: Path, data_dir: str | None, argv: list[str]) -> str:
    from sftune.tasks import get_task

    tasks = list(profile["tasks"])
    methods = [m for g in profile["groups"].values() for m in g["methods"]]
    lr = {m: g.get("lr") for g in profile["groups"].values() for m in g["methods"]}
    runs = collect(out)
    majority = majority_scores(tasks, data_dir or profile.get("data_dir"))
    models = sorted({k[0] for k in runs})
    walls = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}
    commit = short_commit()
    lines = [f"### Profile `{profile_name}`: {profile.get('description', '')}", "",
             f"* command: `python bench/quality/run.py {' '.join(argv)}` (from the repository root)",
             f"* commit: `{commit}`; hardware: {hardware()}",
             f"* wall time of the sweeps: {sum(walls.values()) / 3600:.2f} h ({len(walls)} sweeps)",
             "* cells: dev " + ", ".join(f"{t} {get_task(t).main_metric}" for t in tasks)
             + " x 100, mean ± sample std (seeds); majority: the training set's most frequent label", ""]
    below = []
    for model in models:
        head = "| method | lr | " + " | ".join(tasks) + " |"
        lines += [f"**{model}**", "", head, "|" + "---|" * (len(tasks) + 2)]
        lines.append("| majority class | — | " + " | ".join(
            f"{100 * majority[t][get_task(t).main_metric]:.1f}" for t in tasks) + " |")
        for m in methods:
            cells = []
            for t in tasks:
                main = get_task(t).main_metric
                values = [r["metrics"][get_task(t).eval_splits[0]][main] for r in runs.get((model, t, m), [])]
                cells.append(_cell(values))
                if values and statistics.fmean(values) <= majority[t][main]:
                    below.append(f"{model} {m} on {t}: {100 * statistics.fmean(values):.1f} <= "
                                 f"{100 * majority[t][main]:.1f}")
            lines.append(f"| {m} | {lr[m] if lr[m] is not None else 'preset'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Not above the majority class: " + ("; ".join(below) if below else "none") + ".")
    return "\n".join(lines) + "\n"


def staged_out(arg: str | None, profile: dict) -> Path:
    """A staged profile's run root: --out, else SFTUNE_QUALITY_OUT, else the profile's `out`."""
    return Path(arg or os.environ.get("SFTUNE_QUALITY_OUT") or profile["out"]).expanduser()


def staged_main(name: str, profile: dict, args: argparse.Namespace) -> None:
    """A profile with `waves` (cpu-long): grid on the held-out split, seeds at the chosen rate, records."""
    import claims
    import staged

    out = staged_out(args.out, profile)
    records = ROOT / profile["records"]
    methods = args.methods.split(",") if args.methods else None
    if methods:
        unknown = set(methods) - {m for w in profile["waves"] for m in w}
        if unknown:
            sys.exit(f"error: --methods {','.join(sorted(unknown))}: not in profile {name}")
    tasks = args.tasks.split(",") if args.tasks else None
    if tasks and set(tasks) - set(profile["tasks"]):
        sys.exit(f"error: --tasks {','.join(sorted(set(tasks) - set(profile['tasks'])))}: not in profile {name} "
                 f"(its tasks: {','.join(profile['tasks'])})")
    if args.report_only and out.is_dir():  # record what finished, e.g. while a run goes on in the background
        n = staged.harvest(out, records, profile, staged.load_records(records, profile), prune=False)
        print(f"recorded {n} finished run(s) found in {out}", flush=True)
    if not args.report_only:
        env_for_runs(profile.get("threads", 1))
        staged.run(profile, out, records, args.jobs or profile.get("jobs", 1), methods, args.data_dir,
                   dry_run=args.dry_run, tasks=tasks)
        if args.dry_run:
            return
    known = staged.load_records(records, profile)
    majority = majority_scores(list(profile["tasks"]), args.data_dir or profile.get("data_dir"))
    command = f"python bench/quality/run.py {name}" + (" --write docs/results.md" if args.write else "")
    fig = ROOT / profile["figure"] if profile.get("figure") and args.write else None
    block = claims.report(name, profile, known, majority, fig, command)
    print(block)
    if args.write:
        write_block(Path(args.write), name, block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="cpu, gpu, cpu-long or a profile YAML")
    ap.add_argument("--out", default=None, help="sweep root (default: bench/quality/out/PROFILE; cpu-long: the "
                    "profile's `out`, or SFTUNE_QUALITY_OUT)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (staged profiles; default: the profile's)")
    ap.add_argument("--methods", default=None,
                    help="only these methods (staged profiles), e.g. to leave some for later")
    ap.add_argument("--tasks", default=None, help="only these tasks (staged profiles), e.g. to run some first")
    ap.add_argument("--model", default=None, help="replace the profile's model(s), e.g. a local path")
    ap.add_argument("--data-dir", default=None, help="GLUE directory (replaces the profile's)")
    ap.add_argument("--write", default=None, help="put the table into this Markdown file")
    ap.add_argument("--dry-run", action="store_true", help="print the sweeps and exit")
    ap.add_argument("--report-only", action="store_true", help="only build the tables from the runs on disk")
    args = ap.parse_args()
    name, profile = load_profile(args.profile)
    if "waves" in profile:
        return staged_main(name, profile, args)
    out = Path(args.out) if args.out else Path(os.path.relpath(HERE / "out" / name))
    sweeps = sweep_commands(profile, out, args.model, args.data_dir)
    if args.dry_run:
        for s in sweeps:
            print(shlex.join(s["cmd"]))
        return
    if not args.report_only:
        run_sweeps(sweeps, out)
    block = report(name, profile, out, args.data_dir, sys.argv[1:])
    print(block)
    if args.write:
        write_block(Path(args.write), name, block)


if __name__ == "__main__":
    main()
