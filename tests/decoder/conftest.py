"""Tiny decoder-only LMs built from a config, one per family (Llama, Qwen2, Qwen3, Mistral, GPT-2), with a
byte-level BPE tokenizer trained here. Llama-likes get a chat template; GPT-2 has none (the plain prompt/response
path) and, like the real GPT-2 tokenizer, no pad token."""

from __future__ import annotations

from pathlib import Path

import pytest

GSM8K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"
DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gpt2")

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def decoder_config(family: str, vocab: int, bos: int, eos: int, tie: bool = True):
    from transformers import AutoConfig

    if family == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                    bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=tie)
    extra = {"head_dim": 16} if family == "qwen3" else {}
    return AutoConfig.for_model(family, vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=tie, **extra)


def decoder_tokenizer(corpus: list[str], chat: bool):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, special_tokens=special)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>" if chat else "<|endoftext|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_decoder(family: str, out: Path, corpus: list[str], head: str = "causal-lm", tie: bool = True) -> Path:
    """save_pretrained directory of a tiny `family` model with a causal-LM (or 2-label classification) head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = decoder_tokenizer(corpus, chat=family != "gpt2")
    config = decoder_config(family, len(tok), tok.bos_token_id, tok.eos_token_id, tie)
    torch.manual_seed(0)
    if head == "causal-lm":
        model = AutoModelForCausalLM.from_config(config)
    else:
        config.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _rte_corpus(glue) -> list[str]:
    import csv

    lines = []
    with open(glue / "RTE" / "train.tsv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            lines += row[1:3]
    return lines[:600]


@pytest.fixture(scope="session")
def decoder_corpus(glue_dir) -> list[str]:
    return _rte_corpus(glue_dir)


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory, decoder_corpus) -> dict[str, Path]:
    """save_pretrained directories of tiny causal LMs, one per family (tied embeddings)."""
    root = tmp_path_factory.mktemp("tiny_lm")
    return {f: build_decoder(f, root / f, decoder_corpus) for f in DECODERS}


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K / "train.jsonl").is_file():
        pytest.skip(f"GSM8K files not found at {GSM8K}")
    return GSM8K


@pytest.fixture(scope="session")
def gsm8k_small(gsm8k_dir, tmp_path_factory) -> Path:
    """The first 32 training and 8 test rows of the real GSM8K files, in the same layout (fast to read)."""
    root = tmp_path_factory.mktemp("gsm8k_small")
    for name, n in (("train.jsonl", 32), ("test.jsonl", 8)):
        lines = (gsm8k_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (root / name).write_text("".join(lines), encoding="utf-8")
    return root
