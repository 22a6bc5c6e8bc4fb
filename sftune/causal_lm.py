"""The causal-LM objective's model and evaluation (tasks whose objective is `causal-lm`, e.g. gsm8k).

Evaluation, per evaluation split:

* `loss`: the mean negative log-likelihood per response token (prompt and padding excluded), `perplexity` its
  exponential. Every evaluation during training reports these.
* with generation (the final evaluation of `sftune train` and every `sftune eval`): the model answers each
  prompt (batched, left padding, greedy unless data.temperature > 0, at most data.max_new_tokens; 0 skips
  generation), the task's scorer reads the answers, and `exact_match` is the share scored correct. The
  predictions files hold each prompt's generated text, the extracted and gold answers and whether they
  match. The held-out split carved from the training data (data.validation_from_train) gets the loss only:
  generating is what costs, and the loss is what model selection reads there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sftune.data import HELDOUT
from sftune.generation import SCORERS, generate
from sftune.lm_data import IGNORE
from sftune.models import _hub_error, max_tokens, pad_from_eos, resolve_model_path, set_dropout


def load_causal_lm(name: str, trust_remote_code: bool = False, revision: str | None = None,
                   dropout: float | None = None):
    """AutoModelForCausalLM from a Hub id, a local directory or an alias (smollm2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
        if dropout is not None:
            set_dropout(config, dropout)
        pad_from_eos(config)
        return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=trust_remote_code,
                                                    revision=revision)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None


def usable_length(cfg) -> int:
    """data.max_length, cut to the model's context length: a row longer than the position embeddings would fail
    inside the model (GPT-2 with 256 positions under the causal-LM default of 384)."""
    from transformers import AutoConfig

    m = cfg.model
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(m.name), trust_remote_code=m.trust_remote_code,
                                            revision=m.revision)
    except (OSError, ValueError) as e:
        raise _hub_error(m.name, e) from None
    positions = max_tokens(config)
    return min(cfg.data.max_length, positions) if positions else cfg.data.max_length


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed NLL of its response tokens and their number (next-token prediction)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view(shift_labels.shape)
    return nll.sum(1), (shift_labels != IGNORE).sum(1)


# Evaluation forwards at most this many logits ([rows, width, vocab], 512 MB in fp32): a batch of 64 GSM8K rows at
# width 384 with a 49,152-token vocabulary would otherwise hold 4.8 GB of logits, twice over in the loss.
LOGITS_BUDGET = 2**27


def row_chunks(batch: dict[str, torch.Tensor], vocab: int):
    """The batch in slices of rows whose logits fit LOGITS_BUDGET (at least one row each)."""
    n, width = batch["input_ids"].shape
    rows = max(1, LOGITS_BUDGET // max(width * vocab, 1))
    for start in range(0, n, rows):
        yield {k: v[start:start + rows] for k, v in batch.items()}


@torch.no_grad()
def evaluate_lm(trainer, generate_answers: bool) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Metrics and predictions per evaluation split (see the module docstring)."""
    acc = trainer.accelerator
    model = trainer.model
    model.eval()
    for plugin in trainer.plugins:
        plugin.eval_mode()
    results, predictions = {}, {}
    config = getattr(acc.unwrap_model(model), "config", None)
    vocab = getattr(config, "vocab_size", None) or 2**16
    for split, loader in trainer.eval_loaders.items():
        sums, counts, idxs = [], [], []
        for batch in loader:
            batch = dict(batch)
            idx = batch.pop("idx")
            parts = [token_nll(model(**{k: v for k, v in part.items() if k != "labels"}).logits, part["labels"])
                     for part in row_chunks(batch, vocab)]
            nll, n = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            idx, nll, n = acc.gather_for_metrics((idx, nll, n))
            sums.append(nll.cpu())
            counts.append(n.cpu())
            idxs.append(idx.cpu())
        total, tokens = torch.cat(sums).double().sum(), torch.cat(counts).sum()
        loss = float(total / max(int(tokens), 1))
        results[split] = {"loss": loss, "perplexity": float(torch.exp(torch.tensor(loss)))}
        rows = [{"idx": i} for i in torch.cat(idxs).tolist()]
        if generate_answers and trainer.task.scorer and split != HELDOUT and trainer.cfg.data.max_new_tokens:
            rows = _generate_and_score(trainer, split, results[split])
        predictions[split] = rows
    for plugin in trainer.plugins:
        plugin.train_mode()
    return results, predictions


def _generate_and_score(trainer, split: str, metrics: dict) -> list[dict]:
    """Answers for every prompt of the split (on the main process's unwrapped model), scored."""
    cfg = trainer.cfg.data
    data = trainer.eval_sets[split]
    model = trainer.accelerator.unwrap_model(trainer.model)
    texts = generate(model, trainer.tokenizer, data["prompt_ids"], cfg.eval_batch_size, cfg.max_new_tokens,
                     cfg.temperature, trainer.cfg.train.seed, cfg.generation_threads)
    scorer = SCORERS[trainer.task.scorer]
    rows, correct = [], 0
    for idx, text, reference in zip(data["idx"], texts, data["reference"]):
        extracted, gold, ok = scorer(text, reference)
        correct += ok
        rows.append({"idx": idx, "label": gold, "prediction": extracted, "correct": ok, "generated": text})
    metrics["exact_match"] = correct / max(len(rows), 1)
    return rows
