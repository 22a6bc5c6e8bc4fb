"""Linear probes on the frozen checkpoint: what a head alone *could* reach, measured.

    python bench/quality/probe.py --data-dir ../shared/data/glue --json docs/bench/probe-minilm.json

The `frozen` method trains only the classification head on top of a fixed encoder. When its dev score sits at
the majority class (or, on STS-B, at a correlation of 0), two explanations compete: the head did not train
long enough (an optimisation budget problem), or the features it reads carry no usable signal (a feature
problem). This script tells them apart without training the encoder at all: it encodes each task once with the
real MiniLM weights (eval mode, no dropout) and fits the *best* linear head in closed form (ridge regression for
STS-B, logistic regression otherwise), its regularisation strength chosen on the same held-out rows the
cpu-long profile selects learning rates on (`data.validation_from_train`, drawn from seed 0), then scores dev.

Three feature sets, all from one forward pass of the pair as the classifier sees it:

* `pooler`: the pooler's output, exactly what `BertForSequenceClassification`'s head reads (the pooler is
  frozen under `frozen`: only `classifier.*` trains);
* `cls`: the last layer's [CLS] vector before the pooler;
* `mean`: the last layer's token vectors averaged over the attention mask (how all-MiniLM-L6-v2 was trained
  to be read: sentence-transformers mean pooling).

For STS-B also `cosine`: each sentence encoded on its own, mean-pooled, and the two vectors' cosine taken as the
prediction (no fitting at all: the checkpoint's intended use). And the training pool's label variance: the mean
squared error of the best constant predictor, to compare with the frozen runs' final training loss.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # sftune; run.py (the profile and the majority row) beside this
from run import load_profile, majority_scores  # noqa: E402

# Each task's held-out size, training pool and optimizer steps: the cpu-long profile's.
TASKS = load_profile("cpu-long")[1]["tasks"]
REG_GRID = [10.0 ** e for e in range(-3, 5)]  # ridge alpha; logistic regression C = 1 / alpha


def encode(model, tokenizer, texts_a, texts_b, batch_size: int = 64):
    """(pooler, cls, mean) feature matrices, float64, rows in input order (batched by length for speed)."""
    import torch

    order = sorted(range(len(texts_a)), key=lambda i: len(texts_a[i]) + len(texts_b[i] if texts_b else ""))
    out = {k: [None] * len(order) for k in ("pooler", "cls", "mean")}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            args = ([texts_a[i] for i in idx],) + (([texts_b[i] for i in idx],) if texts_b else ())
            batch = tokenizer(*args, truncation="longest_first", max_length=128, padding=True, return_tensors="pt")
            res = model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(res.last_hidden_state.dtype)
            mean = (res.last_hidden_state * mask).sum(1) / mask.sum(1)
            for j, i in enumerate(idx):
                out["pooler"][i] = res.pooler_output[j].double().numpy()
                out["cls"][i] = res.last_hidden_state[j, 0].double().numpy()
                out["mean"][i] = mean[j].double().numpy()
    return {k: np.stack(v) for k, v in out.items()}


def fit_and_score(task, train_x, train_y, held_x, held_y, dev_x, dev_y):
    """Best linear head: regularisation chosen on heldout; returns (alpha, heldout score, dev score)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    from sftune.metrics import compute

    scaler = StandardScaler().fit(train_x)
    tx, hx, dx = (scaler.transform(x) for x in (train_x, held_x, dev_x))

    def score(model, x, y):
        pred = model.predict(x)
        return compute([task.main_metric], pred.tolist(), y.tolist())[task.main_metric]

    best = None
    for alpha in REG_GRID:
        if task.is_regression:
            model = Ridge(alpha=alpha).fit(tx, train_y)
        else:
            model = LogisticRegression(C=1.0 / alpha, max_iter=2000).fit(tx, train_y)
        held = score(model, hx, held_y)
        if best is None or held > best[1]:
            best = (alpha, held, score(model, dx, dev_y))
    return best


def replay_head(task, train_x, train_y, dev_x, dev_y, *, lr: float, steps: int, seed: int,
                bias_at_mean: bool = False, standardise: bool = False) -> tuple[float, float]:
    """Train the head alone as `frozen` does, on the cached features: nn.Linear with BERT's initialisation
    (normal, std 0.02; bias 0), dropout 0.1 on its input, AdamW (weight decay 0.01 off the bias, eps 1e-8),
    linear decay after 10% warmup, clipping at 1.0, batch 16, shuffled epochs. Returns (last training loss
    averaged over the last 10 steps, dev score). One difference from the real run: the features are the
    eval-mode encoder's (the real run's frozen encoder still applies its own dropout in training mode)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from sftune.metrics import compute

    if standardise:  # each feature centred and scaled on the training rows (the closed-form probe's view)
        centre, scale = train_x.mean(0), train_x.std(0) + 1e-12
        train_x, dev_x = (train_x - centre) / scale, (dev_x - centre) / scale
    torch.manual_seed(seed)  # the dropout's stream
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_x, dtype=torch.float32)
    y = torch.as_tensor(train_y, dtype=torch.float32 if task.is_regression else torch.long)
    head = torch.nn.Linear(x.shape[1], task.num_labels)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.fill_(float(y.mean()) if bias_at_mean else 0.0)
    optim = torch.optim.AdamW([{"params": [head.weight], "weight_decay": 0.01},
                               {"params": [head.bias], "weight_decay": 0.0}], lr=lr, eps=1e-8)
    sched = get_linear_schedule_with_warmup(optim, math.ceil(0.1 * steps), steps)
    drop = torch.nn.Dropout(0.1)
    order, losses = torch.empty(0, dtype=torch.long), []
    for _ in range(steps):
        if len(order) < 16:
            order = torch.cat([order, torch.randperm(len(x), generator=gen)])
        idx, order = order[:16], order[16:]
        out = head(drop(x[idx]))
        loss = (torch.nn.functional.mse_loss(out.squeeze(-1), y[idx]) if task.is_regression
                else torch.nn.functional.cross_entropy(out, y[idx]))
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        out = head(torch.as_tensor(dev_x, dtype=torch.float32))
    pred = out.squeeze(-1) if task.is_regression else out.argmax(-1)
    return float(np.mean(losses[-10:])), compute([task.main_metric], pred.tolist(), dev_y.tolist())[task.main_metric]


def probe_task(name: str, data_dir: str, model, tokenizer, lr: float, cache: Path | None) -> dict:
    from scipy.stats import spearmanr

    from sftune.config import DataConfig
    from sftune.data import carve_validation, load_splits, subsample
    from sftune.tasks import get_task

    task = get_task(name)
    heldout, train_size, steps = (TASKS[name][k] for k in ("heldout", "train_size", "steps"))
    splits = load_splits(task, DataConfig(data_dir=data_dir))
    pool, held = carve_validation(splits.train, heldout, 0, task)
    if train_size:
        pool = subsample(pool, train_size, 1, True, task)  # the pool of seed 1 (the grid's seed)
    dev = splits.evals["validation"]
    started = time.time()
    feats, labels = {}, {}
    for split, ds in (("train", pool), ("heldout", held), ("dev", dev)):
        labels[split] = np.asarray(ds["label"], dtype=float if task.is_regression else int)
        stored = cache / f"{name}-{split}.npz" if cache else None
        if stored and stored.exists():
            feats[split] = dict(np.load(stored))
            continue
        texts_b = ds["text_b"] if task.is_pair else None
        feats[split] = encode(model, tokenizer, ds["text_a"], texts_b)
        if stored:
            np.savez(stored, **feats[split])
    out = {"task": name, "metric": task.main_metric, "n": {k: len(v) for k, v in labels.items()},
           "majority_dev": majority_scores([name], data_dir)[name][task.main_metric], "probes": {}}
    for kind in ("pooler", "cls", "mean"):
        alpha, held_score, dev_score = fit_and_score(task, feats["train"][kind], labels["train"],
                                                     feats["heldout"][kind], labels["heldout"],
                                                     feats["dev"][kind], labels["dev"])
        out["probes"][kind] = {"alpha": alpha, "heldout": held_score, "dev": dev_score}
    x = feats["train"]["pooler"]
    out["pooler_features"] = {"mean_abs": float(np.abs(x.mean(0)).mean()), "std": float(x.std(0).mean()),
                              "norm_of_mean": float(np.linalg.norm(x.mean(0))),
                              "rms_deviation": float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))}
    if task.is_regression:
        out["label_mean_train"] = float(labels["train"].mean())
        out["label_variance_train"] = float(np.var(labels["train"]))
    variants = [("as run", steps, False, False), ("10x steps", 10 * steps, False, False),
                ("as run, features standardised", steps, False, True)]
    if task.is_regression:
        variants += [("as run, bias starts at the label mean", steps, True, False),
                     ("as run, standardised, bias at the mean", steps, True, True)]
    out["replay"] = {"lr": lr, "seeds": [1, 2, 3], "variants": {}}
    for label, n_steps, at_mean, standard in variants:
        runs = [replay_head(task, x, labels["train"], feats["dev"]["pooler"], labels["dev"], lr=lr,
                            steps=n_steps, seed=seed, bias_at_mean=at_mean, standardise=standard)
                for seed in (1, 2, 3)]
        out["replay"]["variants"][label] = {"steps": n_steps, "loss_last": [r[0] for r in runs],
                                            "dev": [r[1] for r in runs]}
    if name == "stsb":
        a = encode(model, tokenizer, dev["text_a"], None)["mean"]
        b = encode(model, tokenizer, dev["text_b"], None)["mean"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["cosine_dev"] = float(spearmanr(cos, labels["dev"]).statistic)
    out["seconds"] = round(time.time() - started, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SFTUNE_DATA_DIR",
                                                             str(HERE.parents[2] / "shared/data/glue")))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--lr", type=float, default=3e-3, help="the head replay's learning rate (frozen's choice)")
    parser.add_argument("--cache", help="keep the encoded features here (npz per task and split) for reruns")
    parser.add_argument("--json", help="write the results here (atomically)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModel

    from sftune.artifacts import atomic_write_json
    from sftune.models import load_tokenizer, resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path(args.model)
    model = AutoModel.from_pretrained(path).eval()  # BertModel with its pretrained pooler
    tokenizer = load_tokenizer(args.model)
    results = {"model": args.model, "torch": torch.__version__, "tasks": []}
    for name in args.tasks.split(","):
        cache = Path(args.cache) if args.cache else None
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
        res = probe_task(name, args.data_dir, model, tokenizer, args.lr, cache)
        results["tasks"].append(res)
        probes = ", ".join(f"{k} {v['dev'] * 100:.1f} (heldout {v['heldout'] * 100:.1f})"
                           for k, v in res["probes"].items())
        extra = f", cosine {res['cosine_dev'] * 100:.1f}" if "cosine_dev" in res else ""
        print(f"{name} ({res['metric']}, dev x100): majority {res['majority_dev'] * 100:.1f}; "
              f"linear probe on {probes}{extra}; {res['seconds']} s", flush=True)
        print(f"   pooler features: {res['pooler_features']}", flush=True)
        for label, v in res["replay"]["variants"].items():
            print(f"   head alone, {label} ({v['steps']} steps, lr {args.lr:g}): dev "
                  f"{np.mean(v['dev']) * 100:.1f} (seeds {', '.join(f'{d * 100:.1f}' for d in v['dev'])}), "
                  f"last loss {np.mean(v['loss_last']):.3f}", flush=True)
    if args.json:
        atomic_write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
