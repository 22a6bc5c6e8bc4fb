"""Decoder-LM benchmark (issue 19): a causal LM on GSM8K before and after each method, plus SST-2 with the
decoder's classification head, as one resumable command.

    python bench/llm/run.py cpu --write docs/llm.md                  # run / resume, then the report
    python bench/llm/run.py cpu --report-only --write docs/llm.md    # the report from the records alone
    python bench/llm/run.py cpu --dry-run                            # the commands a rerun would start

The profile (`bench/llm/PROFILE.yaml`) fixes the data once for every run: from GSM8K's train.jsonl a seeded
permutation gives the held-out rows (validation loss, never trained on) and then the training rows; the test
subset is the first rows of test.jsonl. The runner writes them as two small GSM8K directories under OUT/data
(`gsm8k`: training rows + test subset; `gsm8k-heldout`: the held-out rows as its test file), so every step is
an ordinary sftune command:

* unit `gsm8k/base` (the model before training): `sftune eval MODEL gsm8k` on the test subset (loss, exact
  match) and on the held-out rows with `data.max_new_tokens=0` (loss only);
* unit `gsm8k/METHOD`: `sftune train` (its final evaluation generates on the test subset), then `sftune eval
  RUN` on the held-out rows;
* unit `sst2/METHOD`: `sftune train MODEL sst2` on a stratified training subset, scored on the whole dev set.

Each process's wall time and peak resident memory (the kernel's ru_maxrss of that child, so weights, gradients,
optimizer and method state and activations together, plus Python and torch) are kept next to its output. When a
unit's steps are done its record (metrics, step time, peak memory, training loss, machine load) is appended to
the profile's records file, which is committed: a rerun skips recorded units, an interrupted training resumes
from its checkpoint, and `--report-only` rebuilds the tables from the records alone. A record whose options
(sizes, steps, learning rate, the data files' hashes) differ from the profile's is ignored, so a changed profile
reruns what it changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/common.py
import common  # noqa: E402
from sftune.artifacts import atomic_write_text, read_json, read_jsonl  # noqa: E402


def load_profile(name: str) -> tuple[str, dict]:
    path, profile = common.read_profile(HERE, name, "cpu")
    return path.stem, profile


# ---------------------------------------------------------------------------------------------------- data
def _write_if_changed(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


def gsm8k_rows(g: dict) -> tuple[str, str, str]:
    """(held-out rows, training rows, test subset) as JSON-lines text, fixed by the profile."""
    src = Path(g["data_dir"])
    train = (src / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    test = (src / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    need = g["heldout"] + g["train"]
    if need > len(train) or g["test"] > len(test):
        sys.exit(f"error: the profile wants {need} training and {g['test']} test rows; {src} has "
                 f"{len(train)} and {len(test)}")
    order = list(range(len(train)))
    random.Random(g["split_seed"]).shuffle(order)
    return ("".join(train[i] for i in order[:g["heldout"]]), "".join(train[i] for i in order[g["heldout"]:need]),
            "".join(test[:g["test"]]))


def data_md5(g: dict) -> str:
    """A hash of the three row sets: records made on other rows do not count."""
    return hashlib.md5("\0".join(gsm8k_rows(g)).encode()).hexdigest()


def prepare_gsm8k(g: dict, out: Path) -> dict[str, str]:
    """Write OUT/data/gsm8k (training rows, test subset) and OUT/data/gsm8k-heldout (held-out rows as its
    test.jsonl; its train.jsonl, the training rows, is never read by an evaluation)."""
    heldout, rows, subset = gsm8k_rows(g)
    main, held = out / "data" / "gsm8k", out / "data" / "gsm8k-heldout"
    for path, text in ((main / "train.jsonl", rows), (main / "test.jsonl", subset),
                       (held / "train.jsonl", rows), (held / "test.jsonl", heldout)):
        _write_if_changed(path, text)
    return {"main": str(main), "heldout": str(held), "md5": data_md5(g)}


# ----------------------------------------------------------------------------------------------- the plan
def units(profile: dict, only: list[str] | None = None) -> list[tuple[str, str]]:
    """(task, method) in running order: the GSM8K base model first, then each method, then SST-2."""
    out = [("gsm8k", "base")] + [("gsm8k", m) for m in profile["gsm8k"]["methods"]]
    out += [("sst2", m) for m in (profile.get("sst2") or {}).get("methods", {})]
    return [u for u in out if only is None or u[1] in only or f"{u[0]}/{u[1]}" in only]


def run_options(profile: dict, task: str, method: str, data_md5: str | None) -> dict:
    """What a record must share with the profile to count."""
    t = profile[task]
    m = t["methods"].get(method, {})
    opts = {k: t.get(k) for k in ("train", "test", "heldout", "batch_size", "steps", "max_length",
                                  "max_new_tokens", "split_seed")}
    opts.update(model=profile["model"], lr=m.get("lr"), set=list(profile.get("set") or []) + list(m.get("set") or []))
    if task == "gsm8k":
        opts["data_md5"] = data_md5
    if method == "base":  # nothing trains: only what the evaluation reads counts
        opts = {k: opts[k] for k in ("model", "test", "heldout", "max_length", "max_new_tokens", "split_seed",
                                     "data_md5")}
    return opts


def _common(t: dict, generate: bool = True) -> list[str]:
    """Data options of every step; `generate=False`: loss only (the held-out rows)."""
    out = ["--set", f"data.max_length={t['max_length']}", "--set", f"data.eval_batch_size={t['eval_batch_size']}"]
    if t.get("max_new_tokens") is not None:
        out += ["--set", f"data.max_new_tokens={t['max_new_tokens'] if generate else 0}"]
    return out


def steps_of(profile: dict, task: str, method: str, out: Path, data: dict | None) -> list[dict]:
    """The sftune commands of a unit: name, argv (after `sftune`) and output directory."""
    t, model = profile[task], profile["model"]
    where = out / task / method
    if task == "gsm8k" and method == "base":
        return [{"name": "test", "dir": where / "test",
                 "argv": ["eval", model, "gsm8k", "--data-dir", data["main"], *_common(t)]},
                {"name": "heldout", "dir": where / "heldout",
                 "argv": ["eval", model, "gsm8k", "--data-dir", data["heldout"], *_common(t, generate=False)]}]
    m = t["methods"][method]
    argv = ["train", model, task, "--method", method, "--lr", repr(float(m["lr"])), "--max-steps", str(t["steps"]),
            "--batch-size", str(t["batch_size"]), *_common(t), "--set", "train.log_every=5"]
    if task == "gsm8k":
        argv += ["--data-dir", data["main"]]
    else:
        argv += ["--data-dir", t["data_dir"], "--train-size", str(t["train"]), "--stratified"]
    for item in list(profile.get("set") or []) + list(m.get("set") or []):
        argv += ["--set", item]
    steps = [{"name": "train", "dir": where / "run", "argv": argv}]
    if task == "gsm8k":
        steps.append({"name": "heldout", "dir": where / "heldout",
                      "argv": ["eval", str(where / "run"), "gsm8k", "--data-dir", data["heldout"],
                               *_common(t, generate=False)]})
    return steps


def _marker(step: dict) -> Path:
    return step["dir"] / ("results.json" if step["name"] == "train" else "metrics.json")


def _done(step: dict, before: dict | None = None) -> bool:
    """Whether a step's output is there (a training: complete) and newer than the output of the step it
    reads (`before`: an evaluation of a model trained again since is stale)."""
    marker = _marker(step)
    if not marker.is_file():
        return False
    if step["name"] == "train" and json.loads(marker.read_text()).get("status") != "complete":
        return False
    return before is None or (_marker(before).is_file() and
                              marker.stat().st_mtime >= _marker(before).stat().st_mtime)


def _reads(steps: list[dict], i: int) -> dict | None:
    """The step whose output step i reads: a unit's training, for the evaluations after it."""
    return steps[0] if i and steps[0]["name"] == "train" else None


def _all_done(steps: list[dict]) -> bool:
    return all(_done(s, _reads(steps, i)) for i, s in enumerate(steps))


def command(step: dict) -> list[str]:
    """The command that runs a step now: a training with a checkpoint resumes from it, one without starts
    over (--overwrite replaces what an earlier attempt left)."""
    d = step["dir"]
    if step["name"] != "train":
        return ["sftune", *step["argv"], "-o", str(d), "--format", "json"]
    if (d / "checkpoint").is_dir() and (d / "config.yaml").is_file():
        return ["sftune", "train", "--resume", "-o", str(d), "--format", "json"]
    return ["sftune", *step["argv"], "-o", str(d), "--overwrite", "--format", "json"]


# ---------------------------------------------------------------------------------------------- running
def run_process(cmd: list[str]) -> tuple[int, float, float, float]:
    """(exit code, wall seconds, peak resident MB, CPU seconds) of one child process: ru_maxrss, ru_utime and
    ru_stime from wait4 (the CPU time is what the run costs one core, however loaded the machine is). Linux
    keeps the high-water mark across exec, so the runner's own ~30 MB at the fork may count in the peak."""
    if cmd[0] == "sftune":  # this interpreter's sftune, whether or not its environment is activated
        cmd = [sys.executable, "-m", "sftune", *cmd[1:]]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:  # the child got Ctrl-C too: it checkpoints and stops
        _, status, usage = os.wait4(proc.pid, 0)
        status = 130 << 8
    return (os.waitstatus_to_exitcode(status), time.time() - t0, usage.ru_maxrss / 1024,
            usage.ru_utime + usage.ru_stime)


def _proc_file(step: dict) -> Path:
    return step["dir"].parent / f"{step['name']}.proc.json"


def run_step(step: dict) -> int:
    """Run one step; its wall time adds up over reruns (an interrupted training's time counts), peak memory
    is the largest of its processes."""
    cmd = command(step)
    print(f"== {shlex.join(cmd)}", flush=True)
    load = os.getloadavg()[0]
    rc, wall, rss, cpu = run_process(cmd)
    path = _proc_file(step)
    prev = read_json(path) or {"wall_seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": 0.0, "load": []}
    rec = {"wall_seconds": prev["wall_seconds"] + wall, "cpu_seconds": prev["cpu_seconds"] + cpu,
           "peak_rss_mb": max(prev["peak_rss_mb"], rss),
           "load": prev["load"] + [round(load, 1), round(os.getloadavg()[0], 1)], "rc": rc}
    atomic_write_text(path, json.dumps(rec))
    print(f"   exit {rc}, {wall:.0f} s wall, {cpu:.0f} s CPU, peak {rss:.0f} MB", flush=True)
    return rc


def make_record(profile_name: str, profile: dict, task: str, method: str, steps: list[dict],
                data_md5: str | None) -> dict:
    """The compact record of a finished unit, from its steps' outputs."""
    rec = {"profile": profile_name, "task": task, "method": method,
           "lr": profile[task]["methods"].get(method, {}).get("lr"),
           "run": run_options(profile, task, method, data_md5), "metrics": {}, "procs": {}}
    for step in steps:
        proc = read_json(_proc_file(step)) or {}
        rec["procs"][step["name"]] = {"wall_seconds": round(proc.get("wall_seconds", 0.0), 1),
                                      "cpu_seconds": round(proc.get("cpu_seconds", 0.0), 1),
                                      "peak_rss_mb": round(proc.get("peak_rss_mb", 0.0)), "load": proc.get("load")}
        if step["name"] == "train":
            res = json.loads((step["dir"] / "results.json").read_text())
            manifest = json.loads((step["dir"] / "manifest.json").read_text())
            rec["metrics"].update(res["metrics"])
            rec.update(n_train=res["n_train"], steps=res["steps"], train_seconds=round(res["train_seconds"], 1),
                       step_seconds=round(res["train_seconds"] / max(res["steps"], 1), 2),
                       trainable=res["trainable"]["all"]["trainable"], commit=manifest.get("git_commit"),
                       finished=manifest["timings"].get("finished"),
                       **common.train_loss(step["dir"] / "metrics.jsonl"))
        else:
            found = json.loads((step["dir"] / "metrics.json").read_text())["metrics"]
            rec["metrics"]["heldout" if step["name"] == "heldout" else "test"] = next(iter(found.values()))
    if "commit" not in rec:
        rec["commit"] = common.short_commit()
    return rec


def load_records(path: Path, profile: dict, data_md5: str | None) -> dict[tuple[str, str], dict]:
    found = {}
    for r in read_jsonl(path):
        if r["task"] in profile and r["run"] == run_options(profile, r["task"], r["method"], data_md5):
            found[(r["task"], r["method"])] = r
    return found


def run_all(name: str, profile: dict, out: Path, records: Path, only: list[str] | None, dry_run: bool) -> int:
    data = prepare_gsm8k(profile["gsm8k"], out)
    known = load_records(records, profile, data["md5"])
    failed = []
    for task, method in units(profile, only):
        if (task, method) in known:
            continue
        steps = steps_of(profile, task, method, out, data)
        for i, step in enumerate(steps):
            if _done(step, _reads(steps, i)):
                continue
            if dry_run:
                print(shlex.join(command(step)))
                continue
            rc = run_step(step)
            if rc in (2, 130):
                return rc
            if rc != 0:
                failed.append(f"{task}/{method} {step['name']}: see {step['dir']}")
                break
        if dry_run or not _all_done(steps):
            continue
        rec = make_record(name, profile, task, method, steps, data["md5"])
        common.append_record(records, rec)
        known[(task, method)] = rec
        model_dir = out / task / method / "run" / "model"
        if model_dir.is_dir():
            shutil.rmtree(model_dir)  # 538 MB per run; the record keeps what the report reads
    if failed:
        print("failed (rerun the command to try again):\n  " + "\n  ".join(failed), flush=True)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- report
def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _loss_cell(r: dict) -> str:
    return f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if r.get("loss_first") is not None else "—"


def _cpu_cell(r: dict) -> str:
    return f"{sum(p.get('cpu_seconds', 0.0) for p in r['procs'].values()):.0f}"


def _load_cell(r: dict) -> str:
    loads = [x for p in r["procs"].values() for x in (p.get("load") or [])]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "—"


def gsm8k_summary(known: dict[tuple[str, str], dict], g: dict) -> str:
    """One sentence on what moved: exact-match rows and validation loss of each method against the base model
    (exact match "barely moves" when no method gains or loses more than 2 of the test rows)."""
    base = known.get(("gsm8k", "base"))
    done = [(m, known[("gsm8k", m)]) for m in g["methods"] if ("gsm8k", m) in known]
    if base is None or not done:
        return "Before/after: waiting for the base model's and at least one method's record."

    def rows(r):
        return round(r["metrics"]["test"]["exact_match"] * g["test"])

    def held(r):
        return r["metrics"]["heldout"]["loss"]

    moves = {m: rows(r) - rows(base) for m, r in done}
    parts = [f"{m} {rows(base)} → {rows(r)} rows, val loss {held(base):.3f} → {held(r):.3f}" for m, r in done]
    widest = max(abs(v) for v in moves.values())
    verdict = (f"Exact match barely moves at this model size and budget (at most {widest} of {g['test']} test rows "
               "either way); the loss is what moved" if widest <= 2 else
               f"Exact match moves by up to {widest} of {g['test']} test rows")
    return f"{verdict}: " + "; ".join(parts) + "."


def report(name: str, profile: dict, known: dict[tuple[str, str], dict], command_line: str) -> str:
    """The Markdown block of docs/llm.md's results, from the records alone."""
    g, s = profile["gsm8k"], profile.get("sst2") or {}
    recs = list(known.values())
    commits = sorted({r["commit"] for r in recs if r.get("commit")})
    lines = [f"### Profile `{name}`: {profile.get('description', '')}", "",
             f"* command: `{command_line}` (from the repository root); records: `{profile['records']}`",
             f"* commits of the runs: {', '.join(f'`{c}`' for c in commits) or '—'}; hardware: {common.hardware()}; "
             f"{profile.get('threads', 1)} thread per run",
             f"* GSM8K: {g['train']} training rows and {g['heldout']} held-out rows (validation loss) from a "
             f"seeded permutation of train.jsonl (seed {g['split_seed']}), the first {g['test']} rows of test.jsonl "
             f"(exact match); batch {g['batch_size']}, {g['steps']} steps, max_length {g['max_length']}, greedy "
             f"generation of at most {g['max_new_tokens']} tokens",
             "* loss: mean negative log-likelihood per response token; step s: training wall seconds / steps; unit "
             "CPU s: the CPU time of the unit's processes (model loads, training, evaluations; what it costs one "
             "core); peak MB: the training process's peak resident set (weights, gradients, optimizer and method "
             "state, activations, plus Python and torch; its final evaluation included), from the kernel (the base "
             "model: its largest evaluation process); load: the machine's 1-minute load "
             "average when each process started and ended (2 cores: above 2 the run shared its core)", ""]
    lines += ["| GSM8K | lr | trainable | val loss | test loss | test ppl | exact match | train loss first → last | "
              "step s | train s | unit CPU s | peak MB | load |", "|" + "---|" * 13]
    for method in ["base", *g["methods"]]:
        r = known.get(("gsm8k", method))
        if r is None:
            lines.append(f"| {method} | not run yet |" + " |" * 11)
            continue
        m = r["metrics"]
        test, held = m.get("test", {}), m.get("heldout", {})
        em = test.get("exact_match")
        em_cell = "—" if em is None else f"{em:.3f} ({round(em * g['test'])}/{g['test']})"
        peak = (r["procs"]["train"]["peak_rss_mb"] if "train" in r["procs"] else
                max(p.get("peak_rss_mb", 0) for p in r["procs"].values()))
        label = "before (base model)" if method == "base" else method
        cells = [label, _num(r.get("lr"), "g"), _num(r.get("trainable"), ","), _num(held.get("loss"), ".4f"),
                 _num(test.get("loss"), ".4f"), _num(test.get("perplexity"), ".3f"), em_cell, _loss_cell(r),
                 _num(r.get("step_seconds"), ".1f"), _num(r.get("train_seconds"), ".0f"), _cpu_cell(r),
                 _num(peak, ","), _load_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", gsm8k_summary(known, g)]
    if s:
        lines += ["", f"SST-2 with the decoder's classification head (`score` on the last non-pad token): {s['train']} "
                  f"training sentences (stratified draw, seed 42), batch {s['batch_size']}, {s['steps']} steps, "
                  f"max_length {s['max_length']}, the whole dev set (872).", "",
                  "| SST-2 | lr | trainable | dev accuracy | train loss first → last | step s | train s | unit CPU s |"
                  " peak MB | load |", "|" + "---|" * 10]
        for method in s["methods"]:
            r = known.get(("sst2", method))
            if r is None:
                lines.append(f"| {method} | not run yet |" + " |" * 8)
                continue
            dev = next(iter(r["metrics"].values()))
            cells = [method, _num(r.get("lr"), "g"), _num(r.get("trainable"), ","), _num(dev.get("accuracy"), ".3f"),
                     _loss_cell(r), _num(r.get("step_seconds"), ".2f"), _num(r.get("train_seconds"), ".0f"),
                     _cpu_cell(r), _num(r["procs"]["train"].get("peak_rss_mb"), ","), _load_cell(r)]
            lines.append("| " + " | ".join(cells) + " |")
    walls = sum(p["wall_seconds"] for r in recs for p in r["procs"].values())
    cpus = sum(p.get("cpu_seconds", 0.0) for r in recs for p in r["procs"].values())
    lines += ["", f"Recorded processes ({len(recs)} units): {walls / 3600:.2f} h wall, {cpus / 3600:.2f} h CPU "
              "(what they cost one core; wall above CPU is time spent waiting for a shared core)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="cpu, or a profile YAML")
    ap.add_argument("--out", default=None, help="run directories (default: the profile's `out`, or SFTUNE_LLM_OUT)")
    ap.add_argument("--only", default=None, help="only these units, comma-separated: a method (full) or "
                    "TASK/METHOD (gsm8k/base, sst2/lora)")
    ap.add_argument("--write", default=None, help="put the report into this Markdown file (between markers)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands a rerun would start and exit")
    ap.add_argument("--report-only", action="store_true", help="only build the report from the records")
    args = ap.parse_args()
    name, profile = load_profile(args.profile)
    out = Path(args.out or os.environ.get("SFTUNE_LLM_OUT") or profile["out"]).expanduser()
    records = common.ROOT / profile["records"]
    rc = 0
    if not args.report_only:
        common.env_for_runs(profile.get("threads", 1))
        rc = run_all(name, profile, out, records, args.only.split(",") if args.only else None, args.dry_run)
        if args.dry_run:
            return
    known = load_records(records, profile, data_md5(profile["gsm8k"]))
    command_line = f"python bench/llm/run.py {name}" + (f" --write {args.write}" if args.write else "")
    block = report(name, profile, known, command_line)
    print(block)
    if args.write:
        common.write_block(Path(args.write), f"llm-{name}", block)
    sys.exit(rc)


if __name__ == "__main__":
    main()
