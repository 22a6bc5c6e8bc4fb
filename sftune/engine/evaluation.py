"""Evaluation of a classification or regression task: metrics and per-example predictions on every eval split.

The Trainer calls it (`Trainer.evaluate`); causal-LM tasks have their own (`sftune.causal_lm.evaluate_lm`).
Plug-ins are switched to their evaluation behaviour around it (Mixout evaluates the raw weights).
"""

from __future__ import annotations

import torch

from sftune import metrics as metric_fns
from sftune.engine.guard import NonFiniteGuard


@torch.no_grad()
def evaluate_classifier(trainer) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Metrics per eval split and predictions: {idx, label, prediction[, probabilities]} per example."""
    task, model = trainer.task, trainer.model
    model.eval()
    for plugin in trainer.plugins:
        plugin.eval_mode()
    results, predictions = {}, {}
    for split, loader in trainer.eval_loaders.items():
        idx, logits, gold = predict(trainer, loader)
        NonFiniteGuard.check_outputs(trainer.state.step, split, logits)  # no metric from NaN outputs
        rows = []
        if task.is_regression:
            pred = logits.squeeze(-1)
            for i, p, g in zip(idx.tolist(), pred.tolist(), gold.tolist()):
                rows.append({"idx": i, "label": g, "prediction": p})
        else:
            probs = logits.softmax(-1)
            pred = probs.argmax(-1)
            names = task.label_names
            for i, p, g, pr in zip(idx.tolist(), pred.tolist(), gold.tolist(), probs.tolist()):
                rows.append({"idx": i, "label": names[g], "prediction": names[p],
                             "probabilities": [round(x, 6) for x in pr]})
        results[split] = metric_fns.compute(task.metrics, pred.tolist(), gold.tolist())
        predictions[split] = rows
    for plugin in trainer.plugins:
        plugin.train_mode()
    return results, predictions


@torch.no_grad()
def predict(trainer, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row ids, float32 logits and gold labels of every example `loader` yields, in its order and gathered over
    processes, on the CPU. The caller sets evaluation mode (evaluate_classifier also tells the plug-ins)."""
    idxs, golds, outs = [], [], []
    for batch in loader:
        batch = dict(batch)
        idx = batch.pop("idx")
        labels = batch.pop("labels", None)
        logits = trainer.model(**batch).logits.float()
        idx, logits, labels = trainer.accelerator.gather_for_metrics((idx, logits, labels))
        idxs.append(idx.cpu())
        outs.append(logits.cpu())
        golds.append(labels.cpu())
    return torch.cat(idxs), torch.cat(outs), torch.cat(golds)
