"""Instruction data for the causal-LM objective: reading, chat formatting, response-only labels, batching.

Sources, in the same order of precedence as the GLUE tasks: `--train-file`/`--validation-file` (JSON lines),
a directory (`--data-dir`, e.g. ../shared/data/gsm8k with train.jsonl and test.jsonl), the Hub dataset.
A row is either

    {"prompt": "...", "response": "..."}                          (or the task's own fields: GSM8K question/answer)
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}

and becomes `idx`, `messages` (the conversation up to the answer, JSON text) and `response` (the last assistant
turn). With a chat template (SmolLM2, Qwen, Llama-3 instruct tokenizers) the text is the template applied to the
conversation; without one, the prompt then a newline then the response and EOS. The loss covers the response
tokens only (the prompt's labels are -100). Over-long examples keep the whole response (cut at max_length if it
alone is longer) and the end of the prompt, where the template's answer header sits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sftune.config import DataConfig
from sftune.data import EpochSampler, Splits, file_md5, read_table
from sftune.errors import UsageError
from sftune.tasks import Task

IGNORE = -100  # label of tokens outside the loss (prompt and padding), as transformers' causal-LM loss expects


# ------------------------------------------------------------------------------------------------ reading
def _conversation(row: dict, task: Task, where: str) -> tuple[list[dict], str]:
    """(messages before the answer, the answer) of one row."""
    messages = row.get("messages")
    if messages:
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                     for m in messages):
            raise UsageError(f"{where}: 'messages' must be a list of {{role, content}} objects.")
        if messages[-1]["role"] != "assistant":
            raise UsageError(f"{where}: the last message must be the assistant's answer (role 'assistant'), "
                             f"got '{messages[-1]['role']}'.")
        return [{"role": m["role"], "content": str(m["content"])} for m in messages[:-1]], str(messages[-1]["content"])
    for prompt_key, response_key in ((task.prompt_field, task.response_field), ("prompt", "response")):
        if row.get(prompt_key) is not None and row.get(response_key) is not None:
            return [{"role": "user", "content": str(row[prompt_key])}], str(row[response_key])
    raise UsageError(f"{where}: a row needs 'prompt' and 'response' fields, "
                     f"'{task.prompt_field}' and '{task.response_field}', or 'messages'; it has "
                     f"{', '.join(k for k, v in row.items() if v is not None)}.")


def _normalise(table, task: Task, where: str):
    import datasets

    rows = [_conversation(row, task, f"{where} row {i + 1}") for i, row in enumerate(table)]
    return datasets.Dataset.from_dict({"idx": list(range(len(rows))),
                                       "messages": [json.dumps(m) for m, _ in rows],
                                       "response": [r for _, r in rows]})


def load_lm_splits(task: Task, cfg: DataConfig, need_train: bool = True) -> Splits:
    """Training and evaluation conversations from files, a directory or the Hub; `eval_size` keeps the first
    rows of each evaluation split (a fixed subset, the same for every run)."""
    splits, prints = {}, []
    if cfg.train_file or cfg.validation_file:
        if need_train and not cfg.train_file:
            raise UsageError("--validation-file needs --train-file too for training (or use --data-dir).")
        if not cfg.validation_file:
            raise UsageError("--train-file needs --validation-file too: sftune evaluates on a held-out file.")
        files, source = {"train": cfg.train_file, task.eval_splits[0]: cfg.validation_file}, "files"
    elif cfg.data_dir or os.environ.get("SFTUNE_DATA_DIR"):
        root = Path(cfg.data_dir or os.environ["SFTUNE_DATA_DIR"]).expanduser()
        if (root / task.dir_name).is_dir():
            root = root / task.dir_name
        if not root.is_dir():
            raise UsageError(f"data directory {root} does not exist. Point --data-dir at a directory holding "
                             f"{', '.join(task.dir_files.values())}.")
        files, source = {s: str(root / f) for s, f in task.dir_files.items()}, f"dir:{root}"
    else:
        return _from_hub(task, cfg, need_train)
    for split, fname in files.items():
        if split == "train" and not need_train:
            continue
        path = Path(fname)
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise UsageError(f"data file {path}: task {task.name} reads JSON lines (.jsonl) with prompt/response "
                             "fields or chat messages.")
        table = read_table(path)
        splits[split] = _normalise(table, task, str(path))
        prints.append({"split": split, "path": str(path.resolve()), "md5": file_md5(path), "rows": len(table)})
    return _finish(splits, source, prints, cfg)


def _from_hub(task: Task, cfg: DataConfig, need_train: bool) -> Splits:
    import datasets

    if not task.hub_dataset:
        raise UsageError(f"task {task.name} has no Hub dataset: give --train-file/--validation-file (JSON lines "
                         "with prompt/response fields or chat messages) or --data-dir DIR (with "
                         f"{', '.join(task.dir_files.values())}).")
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(task.hub_dataset, task.hub_config)
    except Exception as e:  # network, offline mode or a missing config: one clear sentence
        raise UsageError(f"cannot load {task.hub_dataset}/{task.hub_config} from the Hugging Face Hub "
                         f"({type(e).__name__}). Without a network use --data-dir DIR (with "
                         f"{', '.join(task.dir_files.values())}) or --train-file/--validation-file.") from None
    wanted = (("train",) if need_train else ()) + task.eval_splits
    splits = {s: _normalise(ds[s], task, f"{task.hub_dataset}:{s}") for s in wanted}
    prints = [{"split": s, "dataset": task.hub_dataset, "config": task.hub_config,
               "fingerprint": ds[s]._fingerprint} for s in wanted]
    return _finish(splits, f"hub:{task.hub_dataset}", prints, cfg)


def _finish(splits: dict, source: str, prints: list, cfg: DataConfig) -> Splits:
    train = splits.pop("train", None)
    if cfg.eval_size:
        splits = {s: d.select(range(min(cfg.eval_size, len(d)))) for s, d in splits.items()}
    return Splits(train, splits, source, prints)


# -------------------------------------------------------------------------------------------- tokenising
def format_example(tokenizer, messages: list[dict], response: str) -> tuple[str, str]:
    """(prompt text, response text): the chat template when the tokenizer has one, else prompt + newline and
    response + EOS. The prompt ends where the model's answer begins (the template's generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return prompt, response + (tokenizer.eos_token or "")  # a template that rewrites earlier turns
    text = "\n\n".join(m["content"] for m in messages)
    return text + "\n", response + (tokenizer.eos_token or "")


def encode_lm(dataset, tokenizer, max_length: int):
    """input_ids, labels (-100 on the prompt), prompt_ids (for generation), reference (the gold response)."""
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []

    def encode(batch):
        out = {"input_ids": [], "labels": [], "prompt_ids": [], "reference": []}
        for messages, response in zip(batch["messages"], batch["response"]):
            prompt_text, response_text = format_example(tokenizer, json.loads(messages), response)
            prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            if bos and prompt[:1] != bos:
                prompt = bos + prompt
            answer = tokenizer(response_text, add_special_tokens=False)["input_ids"][:max_length - 1]
            prompt = prompt[-(max_length - len(answer)):]  # keep the prompt's end (the answer header)
            out["input_ids"].append(prompt + answer)
            out["labels"].append([IGNORE] * len(prompt) + answer)
            out["prompt_ids"].append(prompt)
            out["reference"].append(response)
        return out

    return dataset.map(encode, batched=True, remove_columns=["messages", "response"], desc=None)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (Llama's does; GPT-2's and Qwen's do not)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


class LMCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100); keeps idx."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "idx" in rows[0]:
            out["idx"] = torch.tensor([r["idx"] for r in rows])
        return out


def make_lm_loader(dataset, tokenizer, batch_size: int, shuffle_seed: int | None = None):
    """Batches of the training columns only (prompt_ids and reference stay in the dataset for generation)."""
    columns = [c for c in ("idx", "input_ids", "labels") if c in dataset.column_names]
    sampler = EpochSampler(len(dataset), shuffle_seed) if shuffle_seed is not None else None
    return torch.utils.data.DataLoader(dataset.select_columns(columns), batch_size=batch_size, sampler=sampler,
                                       collate_fn=LMCollator(tokenizer.pad_token_id),
                                       generator=torch.Generator().manual_seed(0))


def response_logits(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The logits that predict response tokens, [n, vocab] (the shifted positions whose label is not -100), for
    regularisers that compare two predictions on a causal-LM batch; classification logits pass through."""
    labels = batch.get("labels")
    if logits.dim() != 3 or labels is None or labels.dim() != 2:
        return logits
    keep = labels[:, 1:] != IGNORE
    return logits[:, :-1][keep]
