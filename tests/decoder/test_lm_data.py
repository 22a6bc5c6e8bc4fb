"""Instruction data, response-only labels, GSM8K files, scorers, batched generation with left padding, and
decoder classifiers padding with EOS."""

from __future__ import annotations

import json

import pytest
import torch
from decoder_models import build_decoder

from sftune.config import DataConfig
from sftune.errors import UsageError
from sftune.generation import final_number, generate, score_gsm8k
from sftune.lm_data import IGNORE, LMCollator, encode_lm, load_lm_splits
from sftune.models import load_model, load_tokenizer
from sftune.tasks import get_task


def _rows(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _encoded(tok, rows, tmp_path, max_length=256):
    f = _rows(tmp_path, "d.jsonl", rows)
    splits = load_lm_splits(get_task("instruct"), DataConfig(train_file=f, validation_file=f))
    return encode_lm(splits.train, tok, max_length)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loss_covers_the_response_tokens_only(tiny_lms, tmp_path, family):
    tok = load_tokenizer(str(tiny_lms[family]))
    rows = [{"prompt": "The cat sat on the mat.", "response": "It did."},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who sat?"},
                          {"role": "assistant", "content": "The cat."}]}]
    enc = _encoded(tok, rows, tmp_path)
    for row, response in zip(enc, ("It did.", "The cat.")):
        ids, labels = row["input_ids"], row["labels"]
        n_prompt = len(row["prompt_ids"])
        assert ids[:n_prompt] == row["prompt_ids"] and labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        answer = tok.decode(ids[n_prompt:])
        if family == "llama":  # chat template: the answer turn ends with the template's end-of-turn
            assert answer == response + "<|im_end|>\n"
            assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
        else:  # no template: prompt, newline, response, EOS
            assert answer == response + tok.eos_token and tok.decode(row["prompt_ids"]).endswith("\n")
        assert row["reference"] == response


def test_truncation_keeps_the_response_and_the_prompt_end(tiny_lms, tmp_path):
    tok = load_tokenizer(str(tiny_lms["llama"]))
    long_prompt = " ".join(["the cat sat on the mat"] * 40)
    enc = _encoded(tok, [{"prompt": long_prompt, "response": "It did."}], tmp_path, max_length=32)[0]
    assert len(enc["input_ids"]) == 32
    assert tok.decode([t for t in enc["labels"] if t != IGNORE]) == "It did.<|im_end|>\n"
    assert tok.decode(enc["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_bad_rows_are_one_line_errors(tmp_path):
    task = get_task("instruct")
    bad = _rows(tmp_path, "bad.jsonl", [{"question": "x"}])
    with pytest.raises(UsageError, match="row 1: a row needs 'prompt' and 'response'"):
        load_lm_splits(task, DataConfig(train_file=bad, validation_file=bad))
    last_user = _rows(tmp_path, "user.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UsageError, match="last message must be the assistant's"):
        load_lm_splits(task, DataConfig(train_file=last_user, validation_file=last_user))
    with pytest.raises(UsageError, match="task instruct has no Hub dataset"):
        load_lm_splits(task, DataConfig())
    tsv = tmp_path / "x.tsv"
    tsv.write_text("a\tb\n1\t2\n")
    with pytest.raises(UsageError, match="reads JSON lines"):
        load_lm_splits(task, DataConfig(train_file=str(tsv), validation_file=str(tsv)))


def test_gsm8k_files_and_a_fixed_evaluation_subset(gsm8k_dir):
    task = get_task("gsm8k")
    assert task.is_causal_lm and not task.is_regression
    full = load_lm_splits(task, DataConfig(data_dir=str(gsm8k_dir)))
    assert len(full.train) == 7473 and len(full.evals["test"]) == 1319
    sub = load_lm_splits(task, DataConfig(data_dir=str(gsm8k_dir), eval_size=5), need_train=False)
    assert sub.train is None and sub.evals["test"]["idx"] == [0, 1, 2, 3, 4]
    assert sub.evals["test"]["response"] == full.evals["test"]["response"][:5]
    first_user = json.loads(full.evals["test"]["messages"][0])[0]["content"]
    assert json.loads(sub.evals["test"]["messages"][0]) == [{"role": "user", "content": first_user}]


def test_gsm8k_scorer():
    reference = "She has 5 + 3 = <<5+3=8>>8 apples.\n#### 1,008"
    assert score_gsm8k("so the answer is #### 1008", reference) == ("1008", "1,008", True)
    assert score_gsm8k("She ends with $1,008.00.", reference)[2]  # no ####: the last number, as a decimal
    assert not score_gsm8k("She ends with 1008 and then 7.", reference)[2]
    assert score_gsm8k("no idea", reference) == (None, "1,008", False)
    assert final_number("-3.5 degrees") == "-3.5"


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # rotary and absolute positions
def test_batched_left_padded_greedy_generation_equals_one_by_one(tiny_lms, family):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_lms[family]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lms[family]))
    prompts = [tok("the cat sat")["input_ids"], tok("on the mat the dog barked at night")["input_ids"], [5]]
    alone = [generate(model, tok, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    for batch_size in (3, 2):  # 2: batched longest first, [long, medium] then [short]; answers in prompt order
        assert generate(model, tok, prompts, batch_size=batch_size, max_new_tokens=6) == alone
    assert len(set(alone)) > 1


def test_generation_runs_with_its_own_thread_count_and_restores_it(tiny_lms):
    """Decode steps run with `threads` intra-op threads on a CPU (one by default: on shared cores more threads
    made generation 27x slower here), and the caller's thread count and training mode come back afterwards."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_lms["llama"]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lms["llama"]))
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model.train()
        generate(model, tok, [tok("the cat sat")["input_ids"]], batch_size=1, max_new_tokens=3)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2 and model.training
        seen.clear()
        generate(model, tok, [tok("the cat sat")["input_ids"]], batch_size=1, max_new_tokens=3, threads=0)
        assert set(seen) == {2}  # 0 keeps torch's setting
    finally:
        torch.set_num_threads(before)


def test_collator_pads_right_and_masks_labels():
    batch = LMCollator(pad_id=0)([{"idx": 0, "input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                  {"idx": 1, "input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_classifier_reads_the_last_real_token(tmp_path, decoder_corpus, family):
    path = build_decoder(family, tmp_path / family, decoder_corpus, head="classification")
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    tok = load_tokenizer(str(path))
    assert tok.padding_side == "right"  # what the loader pads with, whatever the checkpoint says
    assert tok.pad_token == tok.eos_token  # the tiny tokenizers, like GPT-2's, ship no pad token
    model = load_model(str(path), 2).eval()
    assert model.config.pad_token_id == tok.eos_token_id
    texts = ["the cat sat on the mat", "a dog"]
    alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    batch = tok(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, -1] == 0  # padded on the right
    assert torch.allclose(model(**batch).logits, alone, atol=1e-5)
