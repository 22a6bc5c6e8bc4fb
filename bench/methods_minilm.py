"""Every method, both mask modes, 30 steps on the real MiniLM weights and the real RTE files (64 training
rows, stratified; evaluation on the full RTE dev set at the end).

    python bench/methods_minilm.py --json docs/bench/methods-minilm.json --markdown docs/bench/methods-minilm.md

With --json naming an existing file, the rows of the (method, mode) pairs not run this time are kept, so the
table can be filled in parts (--methods, --modes).

Reports per run: mean training loss of the first and last 5 steps, the shares of entries selected and
changed per step (means over the logged steps after the first), the entries changed vs the pre-trained weights
at the end, and RTE dev accuracy. Learning rates follow the papers' ranges: dense-ish methods 1e-4, methods
that update few entries 1e-3 (the Stochastic Tuning grid reaches 3e-3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEW = {"frozen", "bitfit", "layernorm", "random", "top", "stochastic"}  # learning rate 1e-3 (the others 1e-4)


def default_methods() -> list[str]:
    """Every registered method."""
    from sftune.registry import method_names

    return method_names()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--modes", default="grad,update")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--out", default="/tmp/sftune-bench-minilm")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from sftune.artifacts import RunDir, read_jsonl
    from sftune.config import build
    from sftune.engine.loop import Reporter
    from sftune.run import train_run

    rows = []
    order = default_methods()
    for method in args.methods.split(",") if args.methods else order:
        for mode in args.modes.split(","):
            tree = {"model": {"name": "minilm"}, "task": "rte", "method": {"name": method, "mask_mode": mode},
                    # 64 real training rows, seen ~7 times in 30 steps: the loss must fall if the
                    # method can fit them (RTE itself barely moves in 30 steps of MiniLM).
                    "data": {"data_dir": args.glue, "train_size": args.train_size, "stratified": True},
                    "train": {"max_steps": args.steps, "batch_size": 16, "lr": 1e-3 if method in FEW else 1e-4,
                              "log_every": 5, "seed": 1, "eval_every": 10_000}}
            if method == "child-tuning-d":
                tree["method"]["fisher_batches"] = 32
            if method.startswith("dps"):
                tree["method"]["ur"] = 0.1
            run = RunDir(Path(args.out) / f"{method}-{mode}")
            t0 = time.time()
            results = train_run(build(tree), run, Reporter(), overwrite=True)
            records = [r for r in read_jsonl(run.metrics) if r["type"] == "train"]
            later = records[1:] or records
            row = {"method": method, "mode": mode, "lr": tree["train"]["lr"],
                   "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
                   "selected": sum(r.get("selected", 0) for r in later) / len(later),
                   "changed": sum(r.get("changed", 0) for r in later) / len(later),
                   "changed_vs_pretrained": results["sparsity"]["share"],
                   "accuracy": results["metrics"]["validation"]["accuracy"], "wall_s": time.time() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json and Path(args.json).is_file():  # keep earlier rows of other (method, mode) pairs
        new = {(r["method"], r["mode"]) for r in rows}
        rows += [r for r in json.loads(Path(args.json).read_text()) if (r["method"], r["mode"]) not in new]
        rank = {(m, mode): i for i, (m, mode) in enumerate((m, mode) for m in order for mode in ("grad", "update"))}
        rows.sort(key=lambda r: rank.get((r["method"], r["mode"]), len(rank)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        lines = ["| method | mode | lr | loss steps 1-5 | loss steps 26-30 | selected / step | changed / step | "
                 "changed vs pre-trained | RTE dev acc |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['mode']} | {r['lr']:g} | {r['loss_first']:.3f} | "
                         f"{r['loss_last']:.3f} | {100 * r['selected']:.3f}% | {100 * r['changed']:.3f}% | "
                         f"{100 * r['changed_vs_pretrained']:.3f}% | {r['accuracy']:.3f} |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
