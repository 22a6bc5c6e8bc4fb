"""Tiny decoder models and tokenizers built from a config, shared by the decoder tests (a plain module, not
conftest.py: `from conftest import ...` would find the top-level tests/conftest.py first)."""

from __future__ import annotations

from pathlib import Path

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


def config_model(config, head: str = "causal-lm", num_labels: int = 2):
    """A model with random weights (seed 0) from `config`: a causal LM, or a sequence classifier."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if head == "causal-lm":
        return AutoModelForCausalLM.from_config(config)
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config)


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
