"""What sftune's training loop costs per step against transformers.Trainer: full fine-tuning, the same steps.

    python bench/loop_overhead.py --pairs 6 --threads 1 --json docs/bench/loop_overhead-minilm-rte.json

Both sides train the same model (default: the real MiniLM weights, alias `minilm`) on the same RTE examples in
the same order for the same optimizer steps (default: 78 = one epoch of the 2,490 training examples at batch 32),
with the same tokenisation (sftune's, max length 128, dynamic padding), seed, precision (fp32), device and
number of torch threads. The order is sftune's (its EpochSampler for the seed, epoch 0); the Trainer reads the
examples in that order (`train_sampling_strategy="sequential"`), so every step pads the same batch on both
sides. `--steps` can be at most one epoch, where the two orders are the same batches.

* sftune: `Trainer.build()` and `train()`, what `sftune train` runs, with its defaults for full fine-tuning
  (fused AdamW, clipping at 1.0, the divergence guard, a train record every 10 steps with the changed-entries
  count, metrics.jsonl in a run directory).
* transformers.Trainer: its defaults (fused AdamW, clipping at 1.0, a log every 500 steps, no evaluation, no
  checkpoint within 500 steps) except the batch size, the step count, the order above and `disable_tqdm`
  (neither side draws a progress bar).

Timing: each side notes the time at the end of every optimizer step (sftune: `Reporter.step`; the Trainer: a
callback's `on_step_end`). A run's step time is (t[last] - t[skip]) / (last - skip): model loading, the first
`--skip` steps (warm-up) and sftune's final evaluation are outside it, and both sides' per-step logging inside.

Pairs: every run is a fresh process; a pair is one run of each side back to back, sftune first in even pairs and
the Trainer first in odd ones, so drift over minutes hits both sides of a pair alike. Reported: the ratio
sftune / Trainer of each pair, its median, min and max, and each side's median step time. A shared machine adds
noise that pairing does not remove: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("sftune", "trainer")


def train_tree(args) -> dict:
    """sftune's configuration of the run (the Trainer side reads its data settings from it too)."""
    return {"model": {"name": args.model}, "task": "rte", "method": {"name": "full"},
            "data": {"data_dir": args.data_dir, "train_size": args.train_size, "max_length": args.max_length},
            "train": {"seed": args.seed, "batch_size": args.batch_size, "max_steps": args.steps,
                      "cpu": args.device == "cpu"}}


def ordered_train_set(cfg):
    """sftune's tokenised training set in the order sftune's loader reads it in epoch 0 (same rows, subsample
    included), and the tokenizer; raises SystemExit if the steps do not fit in one epoch."""
    from sftune.data import EpochSampler, load_splits, subsample, tokenize
    from sftune.models import load_tokenizer
    from sftune.tasks import get_task

    task = get_task(cfg.task)
    train = load_splits(task, cfg.data).train
    if cfg.data.train_size:
        train = subsample(train, cfg.data.train_size, cfg.train.seed, cfg.data.stratified, task)
    per_epoch = math.ceil(len(train) / cfg.train.batch_size)
    if cfg.train.max_steps > per_epoch:
        raise SystemExit(f"--steps {cfg.train.max_steps}: at most one epoch ({per_epoch} steps of {len(train)} "
                         "examples), where both sides read the same batches.")
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision)
    encoded = tokenize(train, tokenizer, task, cfg.data.max_length)
    return encoded.select(list(EpochSampler(len(encoded), cfg.train.seed))), tokenizer


def run_sftune(cfg, workdir: Path) -> list[float]:
    from sftune.artifacts import RunDir
    from sftune.engine.loop import Reporter, Trainer

    marks: list[float] = []

    class Clock(Reporter):
        def step(self, progress: dict) -> None:
            marks.append(time.perf_counter())

    run_dir = RunDir(workdir / "run")
    run_dir.path.mkdir(parents=True)
    trainer = Trainer(cfg, run_dir, Clock())
    trainer.build()
    trainer.train()
    return marks


def make_hf_trainer(cfg, workdir: Path, callbacks: list):
    """transformers.Trainer with its defaults, on sftune's examples in sftune's order."""
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from sftune.models import resolve_model_path
    from sftune.tasks import get_task

    train, tokenizer = ordered_train_set(cfg)
    set_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model.name),
                                                               num_labels=get_task(cfg.task).num_labels)
    targs = TrainingArguments(output_dir=str(workdir / "trainer"), per_device_train_batch_size=cfg.train.batch_size,
                              max_steps=cfg.train.max_steps, seed=cfg.train.seed, use_cpu=cfg.train.cpu,
                              train_sampling_strategy="sequential", disable_tqdm=True, report_to="none")
    return Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=callbacks)


def run_trainer(cfg, workdir: Path) -> list[float]:
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    make_hf_trainer(cfg, workdir, [Clock()]).train()
    return marks


def step_seconds(marks: list[float], skip: int) -> float:
    """Seconds per step from the end of step `skip` to the end of the last step."""
    if len(marks) <= skip + 1:
        raise ValueError(f"{len(marks)} steps timed: need more than --skip {skip} + 1")
    return (marks[-1] - marks[skip]) / (len(marks) - 1 - skip)


def summary(pairs: list[dict]) -> dict:
    ratios = [p["sftune"] / p["trainer"] for p in pairs]
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratios": ratios, "sftune_step_median": statistics.median(p["sftune"] for p in pairs),
            "trainer_step_median": statistics.median(p["trainer"] for p in pairs)}


def child(args) -> None:
    """One run of one side in this process; its step marks go to --out."""
    import torch
    import transformers

    from sftune.config import build

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg = build(train_tree(args))
    with tempfile.TemporaryDirectory() as tmp:
        marks = (run_sftune if args.side == "sftune" else run_trainer)(cfg, Path(tmp))
    Path(args.out).write_text(json.dumps({"side": args.side, "marks": marks, "threads": torch.get_num_threads()}))


def run_side(side: str, args, out: Path) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--out", str(out),
           *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if k in ("model", "data_dir", "train_size", "max_length", "seed", "batch_size", "steps", "device",
                      "threads") and v is not None)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                          os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{side} run failed:\n{done.stderr[-3000:]}")
    marks = json.loads(out.read_text())["marks"]
    if len(marks) != args.steps:
        raise SystemExit(f"{side}: {len(marks)} steps timed, expected {args.steps}")
    return step_seconds(marks, args.skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=78, help="optimizer steps per run (at most one epoch)")
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of the step time (warm-up)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--train-size", type=int, default=None, help="subsample of RTE train (default: all 2,490)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every run")
    ap.add_argument("--device", default="cpu", choices=("cpu", "auto"), help="auto: a GPU where there is one")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child run
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)
    pairs = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = SIDES if i % 2 == 0 else SIDES[::-1]
            pair = {side: run_side(side, args, Path(tmp) / f"{i}-{side}.json") for side in order}
            pair["first"] = order[0]
            pairs.append(pair)
            print(f"pair {i + 1}/{args.pairs}: sftune {pair['sftune']:.4f} s/step, Trainer {pair['trainer']:.4f} "
                  f"s/step, ratio {pair['sftune'] / pair['trainer']:.3f} ({order[0]} first)", flush=True)
    doc = {"model": args.model, "task": "rte", "train_size": args.train_size, "batch_size": args.batch_size,
           "max_length": args.max_length, "steps": args.steps, "skip": args.skip, "seed": args.seed,
           "threads": args.threads, "device": args.device, "wall_s": round(time.time() - t0, 1),
           "pairs": pairs, **summary(pairs)}
    print(f"sftune / transformers.Trainer per step: median {doc['ratio_median']:.3f} "
          f"(min {doc['ratio_min']:.3f}, max {doc['ratio_max']:.3f}, {args.pairs} pairs); step "
          f"{doc['sftune_step_median']:.4f} s vs {doc['trainer_step_median']:.4f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
