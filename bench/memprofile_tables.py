"""The tables of docs/performance.md's section on decoder memory, rendered from its two JSON reports.

    python bench/memprofile_tables.py [--figures]

Reads docs/bench/memprofile-decoders-estimate.json (a list of `sftune memprofile --estimate --format json`
reports, in the order the section's commands produce them) and docs/bench/memprofile-smollm2-135m-cpu-bs2-seq512.json
(the measured run), and prints in markdown, in the section's order: one estimate table per shape, the
dropout/DoRA activation table, the bf16 sentence and the measured table. With --figures it also prints the
derived figures the section's prose quotes (shares of the peak, fixed part against activations, differences
against full), so that a refresh rewrites no number by hand.

To refresh: rerun the commands the section shows, write their reports into the two files (the estimate file is
the reports as one JSON list: `python -c 'import json,sys; json.dump([json.load(open(f)) for f in
sys.argv[1:]], sys.stdout, separators=(",", ":"))' r01.json ... r13.json`), then run this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftune.profile.report import human_bytes  # noqa: E402

ESTIMATE = ROOT / "docs" / "bench" / "memprofile-decoders-estimate.json"
MEASURED = ROOT / "docs" / "bench" / "memprofile-smollm2-135m-cpu-bs2-seq512.json"
SHAPES = {
    "shape:smollm2-135m": "SmolLM2-135M",
    "shape:qwen2.5-0.5b": "Qwen2.5-0.5B",
    "shape:llama-3.2-1b": "Llama-3.2-1B",
    "shape:llama-3-8b": "Llama-3-8B",
}
GIB = 1 << 30


def cell(report: dict, method: str, batch_size: int) -> dict:
    for c in report["cells"]:
        if c["method"] == method and c["batch_size"] == batch_size:
            return c
    raise KeyError(f"{report['model']} seq {report['seq_len']}: no cell {method} at batch {batch_size}")


def find(reports: list[dict], model: str, seq_len: int, sets: dict, precision: str = "fp32", batches=(1, 8)):
    """The one report of these settings (the estimate file holds several of the same model and length)."""
    hits = [
        r for r in reports
        if r["model"] == model and r["seq_len"] == seq_len and r["sets"] == sets
        and r["precision"] == precision and r["batch_sizes"] == list(batches)
    ]
    if len(hits) != 1:
        raise SystemExit(f"{ESTIMATE.name}: expected one report for {model} {seq_len} {sets} {precision}, "
                         f"found {len(hits)}")
    return hits[0]


BUDGET = {"method.lora_rank": "8", "method.rank": "8"}
NO_DROPOUT = {"method.dropout": "0"}
BF16 = {"method.lora_rank": "8", "method.dropout": "0"}
MEASURED_SETS = {"method.lora_rank": "8"}


def shape_table(reports: list[dict], model: str) -> str:
    short, long = find(reports, model, 512, BUDGET), find(reports, model, 1024, BUDGET)
    params = cell(short, "full", 1)["params"]
    lines = [
        f"**{SHAPES[model]}** (`{model}`, {params:,} parameters with a 2-label head), fp32:",
        "",
        "| method | trainable | weights | gradients | AdamW | method state | activations bs 8, 512 "
        "| peak bs 1, 512 | peak bs 8, 512 | peak bs 1, 1024 | peak bs 8, 1024 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in short["methods"]:
        one, eight = cell(short, method, 1), cell(short, method, 8)
        part = one["parts_max"]
        row = [
            method,
            f"{one['trainable']:,} ({100 * one['trainable'] / one['params']:.2f}%)",
            human_bytes(part["weights"]), human_bytes(part["gradients"]), human_bytes(part["optimizer"]),
            human_bytes(part["method_state"]), human_bytes(eight["parts_max"]["activations"]),
            human_bytes(one["peak_bytes"]), human_bytes(eight["peak_bytes"]),
            human_bytes(cell(long, method, 1)["peak_bytes"]), human_bytes(cell(long, method, 8)["peak_bytes"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def dropout_table(reports: list[dict]) -> str:
    lines = [
        "| model, tokens | full | lora, dropout 0.05 | lora, dropout 0 | dora, dropout 0 |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, seq_len in (("shape:smollm2-135m", 512), ("shape:smollm2-135m", 1024), ("shape:llama-3-8b", 1024)):
        budget, plain = find(reports, model, seq_len, BUDGET), find(reports, model, seq_len, NO_DROPOUT)
        acts = [
            cell(budget, "full", 8), cell(budget, "lora", 8), cell(plain, "lora", 8), cell(plain, "dora", 8),
        ]
        lines.append(f"| {SHAPES[model]}, {seq_len} | "
                     + " | ".join(human_bytes(c["parts_max"]["activations"]) for c in acts) + " |")
    return "\n".join(lines)


def bf16_sentence(reports: list[dict]) -> str:
    report = find(reports, "shape:llama-3-8b", 1024, BF16, precision="bf16")
    labels = {"full": "full", "lora": "lora (dropout 0)", "stochastic": "stochastic at LoRA's budget",
              "dps-dense": "dps-dense"}
    parts = [
        f"{labels[m]} {cell(report, m, 1)['peak_bytes'] / GIB:.2f} / {human_bytes(cell(report, m, 8)['peak_bytes'])}"
        for m in report["methods"]
    ]
    return "bf16, Llama-3-8B, 1,024 tokens, peak at batch 1 / batch 8: " + ", ".join(parts) + "."


def measured_table(reports: list[dict], measured: dict) -> str:
    estimate = find(reports, measured["model"], measured["seq_len"], MEASURED_SETS, batches=measured["batch_sizes"])
    lines = [
        "| method | measured peak | estimated peak | weights | AdamW | method state | activations | runtime | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in measured["cells"]:
        peak = human_bytes(c["peak_bytes"])
        if c["method"] != "full":
            peak += f" ({c['peak_vs_full_pct']:+.1f}%)"
        p = c["parts"]
        row = [
            c["method"], peak, human_bytes(cell(estimate, c["method"], c["batch_size"])["peak_bytes"]),
            human_bytes(p["weights"]), human_bytes(p["optimizer"]), human_bytes(p["method_state"]),
            human_bytes(p["activations"]), human_bytes(p["runtime"]), human_bytes(c["other_bytes"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Measured against estimated, part by part (bytes; parts at the measured peak, gradients their "
                 "maximum; method state detail per attribute):")
    for c in measured["cells"]:
        e = cell(estimate, c["method"], c["batch_size"])
        diffs = {k: c["parts_max"][k] - e["parts_max"][k] for k in ("weights", "gradients", "optimizer",
                                                                     "method_state", "activations")}
        lines.append(f"* {c['method']}: measured - estimated {diffs}; measured state "
                     f"{c['method_state_detail']}, estimated {e['method_state_detail']}")
    return "\n".join(lines)


def figures(reports: list[dict]) -> str:
    """The numbers the prose quotes, derived here so that none is computed by hand."""
    out = []
    for model in SHAPES:
        for seq_len in (512, 1024):
            r = find(reports, model, seq_len, BUDGET)
            full8 = cell(r, "full", 8)
            for method in r["methods"]:
                for bs in (1, 8):
                    c = cell(r, method, bs)
                    pm = c["parts_max"]
                    fixed = pm["weights"] + pm["optimizer"] + pm["method_state"]
                    acts = pm["activations"]
                    out.append(
                        f"{SHAPES[model]:13s} {seq_len:4d} bs{bs} {method:15s} peak {c['peak_bytes'] / GIB:7.2f} GiB"
                        f"  activations {acts / GIB:7.2f} GiB = {100 * acts / c['peak_bytes']:3.0f}% of peak"
                        f"  weights+grads+AdamW(+state) {(fixed + pm['gradients']) / GIB:7.2f} GiB"
                        f"  weights+AdamW(+state) {fixed / GIB:7.2f} GiB"
                        + (f"  peak vs full {100 * (c['peak_bytes'] / cell(r, 'full', bs)['peak_bytes'] - 1):+5.1f}%"
                           if method != "full" else "")
                        + (f"  activations vs full {100 * (acts / full8['parts_max']['activations'] - 1):+5.1f}%"
                           if bs == 8 else "")
                    )
    for seq_len in (512, 1024):
        shares = [
            (100 * c["parts_max"]["activations"] / c["peak_bytes"], SHAPES[model], c["method"])
            for model in list(SHAPES)[:3]
            for c in find(reports, model, seq_len, BUDGET)["cells"] if c["batch_size"] == 8
        ]
        low, high = min(shares), max(shares)
        out.append(f"activations' share of the peak at batch 8 x {seq_len}, every method up to Llama-3.2-1B: "
                   f"{low[0]:.0f}% ({low[1]} {low[2]}) to {high[0]:.0f}% ({high[1]} {high[2]})")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", action="store_true", help="also print the figures the prose quotes")
    args = parser.parse_args()
    reports = json.loads(ESTIMATE.read_text())
    measured = json.loads(MEASURED.read_text())
    blocks = [shape_table(reports, m) for m in SHAPES]
    blocks += [dropout_table(reports), bf16_sentence(reports), measured_table(reports, measured)]
    if args.figures:
        blocks.append(figures(reports))
    print("\n\n".join(blocks))


if __name__ == "__main__":
    main()
