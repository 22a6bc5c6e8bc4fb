"""Selection-and-masking time of every method as a share of a full fine-tuning step, and DPS state bytes.

    python bench/step_share.py --shape roberta-base --steps 4 --json docs/bench/step_share-cpu.json

Builds a model of the given shape from its config (random weights; the shape is what costs time), a
byte-level BPE tokenizer trained on the RTE text, and trains each method for a few steps on the real RTE
files (batch 16 unless --batch-size, length 128) with per-phase timing. Reports medians over the steps after the
first, in both mask modes. Run it on a quiet machine: two jobs on two cores slow each other many-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "roberta-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "roberta-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def default_methods() -> list[str]:
    """Every registered method."""
    from sftune.registry import method_names

    return method_names()


def build_model_dir(shape: str, glue: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import conftest

    tok = conftest.build_tokenizer("roberta", conftest._corpus(glue), out / "_tok")
    config = AutoConfig.for_model("roberta", vocab_size=50265, pad_token_id=tok.pad_token_id,
                                  max_position_embeddings=514, type_vocab_size=1, **SHAPES[shape])
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train_tree(model_dir: Path, glue: Path, method: str, mode: str, steps: int, batch_size: int,
               device: str) -> dict:
    """The run configuration the step benchmarks time: real RTE rows, batch x 128 tokens, `steps` steps."""
    tree = {"model": {"name": str(model_dir)}, "task": "rte", "method": {"name": method, "mask_mode": mode},
            "data": {"data_dir": str(glue), "train_size": batch_size * (steps + 1), "max_length": 128},
            "train": {"max_steps": steps, "batch_size": batch_size, "log_every": 10**9, "measure_changed": False,
                      "cpu": device == "cpu"}}
    if method == "child-tuning-d":
        tree["method"]["fisher_batches"] = 2
    if method.startswith("dps"):
        tree["method"]["ur"] = 0.25  # stage changes inside the few timed steps
    return tree


def run_method(model_dir: Path, glue: Path, method: str, mode: str, steps: int, device: str,
               batch_size: int = 16) -> dict:
    from sftune.config import build
    from sftune.engine.loop import Trainer
    from sftune.engine.timing import PhaseTimer

    trainer = Trainer(build(train_tree(model_dir, glue, method, mode, steps, batch_size, device)))
    trainer.build()
    trainer.phases = PhaseTimer(trainer.accelerator.device)
    trainer.eval_loaders = {}  # time training only
    trainer._evaluate_and_record = lambda final=False: {}
    trainer.train()
    med = trainer.phases.medians(skip=1)
    state = getattr(trainer.method, "state_bytes", lambda: {})()
    masked = getattr(trainer.method, "masked_entries", lambda: None)()
    return {"phases": med, "step": sum(med.values()), "state_bytes": state, "masked_entries": masked}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="roberta-base", choices=SHAPES)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--modes", default="grad,update")
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" else "cpu")
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"
    glue = Path(args.glue)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(args.shape, glue, Path(tmp) / "model")
        rows = []
        for method in args.methods.split(",") if args.methods else default_methods():
            for mode in args.modes.split(","):
                t0 = time.time()
                r = run_method(model_dir, glue, method, mode, args.steps, args.device, args.batch_size)
                rows.append({"method": method, "mode": mode, **r})
                print(f"{method:15s} {mode:6s} step {r['step']:.3f}s selection {r['phases'].get('selection', 0):.4f}s "
                      f"({time.time() - t0:.0f}s wall)", flush=True)
    full = {r["mode"]: r["step"] for r in rows if r["method"] == "full"}
    print(f"\n{'method':15s} {'mode':6s} {'selection/full step':>20s} {'step/full step':>15s}")
    for r in rows:
        base = full.get(r["mode"]) or full.get("grad")
        r["selection_share"] = r["phases"].get("selection", 0.0) / base
        r["step_ratio"] = r["step"] / base
        print(f"{r['method']:15s} {r['mode']:6s} {100 * r['selection_share']:19.2f}% {r['step_ratio']:15.3f}")
    doc = {"shape": args.shape, "batch_size": args.batch_size, "device": args.device, "steps": args.steps,
           "torch_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
