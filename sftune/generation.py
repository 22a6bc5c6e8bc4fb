"""Generation-based evaluation of causal LMs: batched generation with left padding, and the task scorers.

Scorers take (generated text, reference response) and return (extracted answer, gold answer, correct):

* `gsm8k`: the gold answer is the number after `####` in the reference; the prediction is the number after the
  model's own `####` when it writes one, else the last number in its text (the usual lenient reading: small
  instruction models answer in words). Numbers are compared as decimals after dropping thousands separators,
  currency signs and a trailing full stop (`1,000` = `1000` = `1000.00`).
* `exact`: the stripped texts are equal.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import torch

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Decimal(cleaned).normalize()
    except InvalidOperation:
        return None


def final_number(text: str) -> str | None:
    """The number after the last '####', else the last number in the text; None when there is none."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        if found:
            return found[0]
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def score_gsm8k(prediction: str, reference: str) -> tuple[str | None, str | None, bool]:
    gold = final_number(reference.rsplit("####", 1)[1]) if "####" in reference else final_number(reference)
    pred = final_number(prediction)
    g, p = _decimal(gold), _decimal(pred)
    return pred, gold, g is not None and p is not None and g == p


def score_exact(prediction: str, reference: str) -> tuple[str, str, bool]:
    p, g = prediction.strip(), reference.strip()
    return p, g, p == g


SCORERS = {"gsm8k": score_gsm8k, "exact": score_exact}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Continuations of token-id prompts, batched with left padding (the prompts' ends line up, so every row
    starts generating at the same position). Greedy when temperature is 0, else sampling with that
    temperature from a seeded generator. Returns the decoded new text of each prompt, special tokens removed."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    options = dict(max_new_tokens=int(max_new_tokens), pad_token_id=pad, eos_token_id=eos)
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        torch.manual_seed(seed)
    else:
        options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    was_training = model.training
    model.eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return out
