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
             temperature: float = 0.0, seed: int = 0, threads: int = 1) -> list[str]:
    """Continuations of token-id prompts, batched with left padding (the prompts' ends line up, so every row
    starts generating at the same position). Greedy when temperature is 0, else sampling with that
    temperature from a seeded generator. Returns the decoded new text of each prompt, special tokens removed,
    in the prompts' order.

    Prompts are batched longest first, so the rows of a batch have similar lengths and little left padding.
    On a CPU the decoding runs with `threads` intra-op threads (0: torch's setting): each decode step is a
    chain of ~450 small matrix-vector-sized operations, and every multi-threaded one waits at an OpenMP barrier
    for all its threads; when the cores are shared with other jobs that wait is a scheduler time slice, and
    2 threads on this project's loaded 2-core machine generated 27x slower than 1 (docs/llm.md)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    options = dict(max_new_tokens=int(max_new_tokens), pad_token_id=pad, eos_token_id=eos)
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        torch.manual_seed(seed)
    else:
        options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    was_training, previous_threads = model.training, torch.get_num_threads()
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
            for i, text in zip(rows, tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)):
                texts[i] = text
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return texts
