"""The GPU check's results (bench/gpu/run.sh) as Markdown tables, for reading and for docs/performance.md.

    python bench/gpu/summarize.py DIR        # DIR: results.tar.gz unpacked, or the run's working folder

Reads whatever is there (a stage that failed or was skipped leaves its file out): stages.tsv, smoke.json,
step_share-bs*.json, step_time-bs*.json, memprofile-SHAPE-bs*.json (merged per shape into one table set by
sftune's own report code). Prints the tables; nothing is computed that the JSON files do not hold.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"* {path.name}: unreadable ({type(e).__name__}: {e})\n")
        return None


def stages(d: Path) -> list[str]:
    path = d / "stages.tsv"
    if not path.is_file():
        return []
    rows = list(csv.reader(path.open(), delimiter="\t"))
    out = ["## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
    out += [f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows[1:] if len(r) == 3]
    return out + [""]


def smoke(d: Path) -> list[str]:
    doc = _load(d / "smoke.json") if (d / "smoke.json").is_file() else None
    if doc is None:
        return []
    env = doc["env"]
    out = ["## Smoke run (bench/gpu/smoke.py)", "",
           f"Device: {env.get('gpu', env['device'])}; torch {env['torch']}, CUDA {env.get('cuda')}, transformers "
           f"{env['transformers']}; shape {doc['shape']}, batch {doc['batch_size']} x {doc['seq_len']} tokens, "
           f"{doc['steps']} steps per cell, train.flat_grads={doc['flat_grads']}. "
           f"{sum(c['ok'] for c in doc['cells'])}/{len(doc['cells'])} cells pass."]
    if "dps_probe" in doc:
        p = doc["dps_probe"]
        out.append(f"DPS bfloat16 GAM update: multi-tensor = {p['multi_tensor_gam']} (probe agrees bitwise with the "
                   f"chunked update: {p['probe_agrees']}).")
    cols = list(dict.fromkeys((c["precision"], c["mode"]) for c in doc["cells"]))
    out += ["", "Per cell: ok or FAIL, and the steps whose gradients were the flat buffer's views (F) or not (.).", "",
            "| method | " + " | ".join(f"{p} {m}" for p, m in cols) + " |", "|---|" + "---|" * len(cols)]
    by = {(c["method"], c["precision"], c["mode"]): c for c in doc["cells"]}
    for method in dict.fromkeys(c["method"] for c in doc["cells"]):
        row = []
        for p, m in cols:
            c = by.get((method, p, m))
            flat = "".join("F" if s["flat_used"] else "." for s in (c or {}).get("steps", []))
            row.append("-" if c is None else f"{'ok' if c['ok'] else 'FAIL'} {flat}")
        out.append(f"| {method} | " + " | ".join(row) + " |")
    failures = [f"* {c['precision']} {c['method']} {c['mode']}: {'; '.join(c['failures'])}"
                for c in doc["cells"] if not c["ok"]]
    return out + ([""] + failures if failures else []) + [""]


def step_share(d: Path) -> list[str]:
    out = []
    for path in sorted(d.glob("step_share-bs*.json")):
        doc = _load(path)
        if doc is None:
            continue
        out += [f"## Selection share, sequential (bench/step_share.py, {doc['shape']}, batch "
                f"{doc.get('batch_size', 16)}, {doc.get('gpu') or doc['device']})", "",
                "| method | mode | selection / full step | step / full step | step (s) |", "|---|---|---:|---:|---:|"]
        out += [f"| {r['method']} | {r['mode']} | {100 * r['selection_share']:.2f}% | {r['step_ratio']:.3f} | "
                f"{r['step']:.4f} |" for r in doc["rows"]]
        out.append("")
    return out


def step_time(d: Path) -> list[str]:
    out = []
    for path in sorted(d.glob("step_time-bs*.json"), key=lambda p: int(re.findall(r"\d+", p.name)[-1])):
        doc = _load(path)
        if doc is None:
            continue
        out += [f"## Selection share, paired with full (bench/step_time.py, {doc['shape']}, batch {doc['batch_size']}, "
                f"{doc['mode']} mode, {doc['device']})", "",
                "| method | step / full step | selection / full step | full step (s) | hooks (s) |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {r['method']} | {r['step_ratio']:.3f} | {100 * r['selection_share']:.2f}% | {r['full_step']:.4f} | "
                f"{r['hooks']:.4f} |" for r in doc["rows"]]
        out.append("")
    return out


def memprofile(d: Path) -> list[str]:
    from sftune.profile.report import annotate, to_markdown

    shapes: dict[str, list[dict]] = {}
    for path in sorted(d.glob("memprofile-*-bs*.json")):
        doc = _load(path) if path.stat().st_size else None
        if doc is not None:
            shapes.setdefault(doc["model"], []).append(doc)
    out = []
    for model, docs in shapes.items():
        merged = dict(docs[0])
        merged["cells"] = [c for doc in docs for c in doc["cells"]]
        merged["batch_sizes"] = sorted({c["batch_size"] for c in merged["cells"]})
        merged = annotate(merged)
        out += [f"## Memory and step time (sftune memprofile {model}, {merged['precision']}, {merged['mask_mode']} "
                f"mode, {merged.get('device')})", "", to_markdown(merged)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python bench/gpu/summarize.py DIR (the unpacked results.tar.gz)", file=sys.stderr)
        return 2
    d = Path(argv[0])
    lines = ["# GPU check results", ""] + stages(d) + smoke(d) + step_share(d) + step_time(d) + memprofile(d)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
