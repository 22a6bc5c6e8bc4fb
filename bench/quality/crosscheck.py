"""Cross-check: full fine-tuning through sftune against an independent loop on `transformers.Trainer`.

    python bench/quality/crosscheck.py --task sst2 --seeds 5 --json docs/bench/crosscheck-minilm-sst2.json

Both sides get the same model (the real MiniLM weights), the same training subset (sftune's stratified
subsample for the seed: the data, not the loop, is shared), the same tokenisation (max length 128,
longest-first truncation, dynamic padding) and the same hyperparameters (batch 16, lr, epochs, linear decay
after ceil(10%) warmup steps, AdamW eps 1e-8 and weight decay 0.01 off biases and LayerNorm, clipping at 1.0,
dropout as the checkpoint has it). What differs is everything a loop decides for itself: the data order, the
classifier head's random initialisation stream, the dropout stream. So the two dev metrics are compared as
samples over seeds, not run by run.

Tolerance: the difference of the means must lie within 2 standard errors of that difference,
2 * sqrt(sd_sftune^2 / n + sd_trainer^2 / n) (about a 95% interval for equal means), and within 2 points
absolute as a floor where the seeds happen to agree closely. The script prints both and exits 1 if not.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sftune_score(task: str, seed: int, args, workdir: Path) -> float:
    from sftune.artifacts import RunDir
    from sftune.config import build
    from sftune.engine.loop import Reporter
    from sftune.run import train_run

    tree = {"model": {"name": "minilm"}, "task": task, "method": {"name": "full"},
            "data": {"data_dir": args.data_dir, "train_size": args.train_size, "stratified": True},
            "train": {"seed": seed, "lr": args.lr, "epochs": args.epochs, "batch_size": 16,
                      "eval_every": 10**9}}
    results = train_run(build(tree), RunDir(workdir / f"sftune-{task}-{seed}"), Reporter(), overwrite=True)
    split = next(iter(results["metrics"]))
    return results["metrics"][split][args.metric]


def trainer_score(task_name: str, seed: int, args, workdir: Path) -> float:
    """The independent side: transformers' own Trainer, tokenizer, collator and optimizer."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from sftune.config import DataConfig
    from sftune.data import load_splits, subsample
    from sftune.metrics import compute
    from sftune.models import resolve_model_path
    from sftune.tasks import get_task

    task = get_task(task_name)
    splits = load_splits(task, DataConfig(data_dir=args.data_dir))
    train = subsample(splits.train, args.train_size, seed, True, task)  # the same rows sftune trains on
    dev = splits.evals[task.eval_splits[0]]
    path = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    cols = ["text_a", "text_b"] if task.is_pair else ["text_a"]  # sftune's reader names the text columns so

    def encode(batch):
        return tokenizer(*[batch[c] for c in cols], truncation="longest_first", max_length=128)

    keep = ["input_ids", "attention_mask", "token_type_ids", "label"]
    train = train.map(encode, batched=True)
    dev = dev.map(encode, batched=True)
    train = train.remove_columns([c for c in train.column_names if c not in keep])
    dev_labels = list(dev["label"])
    dev = dev.remove_columns([c for c in dev.column_names if c not in keep])
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)
    targs = TrainingArguments(
        output_dir=str(workdir / f"trainer-{task_name}-{seed}"), per_device_train_batch_size=16,
        per_device_eval_batch_size=64, learning_rate=args.lr, num_train_epochs=args.epochs, warmup_steps=0.1,
        lr_scheduler_type="linear", weight_decay=0.01, adam_epsilon=1e-8, max_grad_norm=1.0, seed=seed,
        data_seed=seed, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, optim="adamw_torch")
    trainer = Trainer(model=model, args=targs, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = trainer.predict(dev).predictions
    return compute([args.metric], np.argmax(logits, axis=-1).tolist(), dev_labels)[args.metric]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            a = sftune_score(args.task, seed, args, Path(tmp))
            b = trainer_score(args.task, seed, args, Path(tmp))
            rows.append({"seed": seed, "sftune": a, "trainer": b})
            print(json.dumps(rows[-1]), flush=True)
    xs, ys = [r["sftune"] for r in rows], [r["trainer"] for r in rows]
    n = len(rows)
    sd_x, sd_y = (statistics.stdev(xs), statistics.stdev(ys)) if n > 1 else (0.0, 0.0)
    diff = statistics.fmean(xs) - statistics.fmean(ys)
    tol = max(2 * math.sqrt(sd_x**2 / n + sd_y**2 / n), 0.02)
    summary = {"task": args.task, "metric": args.metric, "train_size": args.train_size, "epochs": args.epochs,
               "lr": args.lr, "seeds": n, "sftune_mean": statistics.fmean(xs), "sftune_std": sd_x,
               "trainer_mean": statistics.fmean(ys), "trainer_std": sd_y, "difference": diff, "tolerance": tol,
               "within": abs(diff) <= tol, "wall_s": time.time() - t0, "runs": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if summary["within"] else 1)


if __name__ == "__main__":
    main()
