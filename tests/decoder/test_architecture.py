"""Module roles by structure on every decoder family (and the encoders keep theirs): groups, norms, tied
embeddings, layer stacks, candidate kinds, adapter targets. Models are built from a config (no tokenizer)."""

from __future__ import annotations

import pytest
import torch
from decoder_models import DECODERS, config_model, decoder_config
from torch import nn

from sftune import architecture as arch
from sftune.methods.budget import candidate_modules
from sftune.models import group_of_params, layer_stack, trainable_table

LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral")


def build(family: str, head: str = "causal-lm", tie: bool = True):
    return config_model(decoder_config(family, 64, 1, 2, tie), head, num_labels=3)


@pytest.mark.parametrize("family", LLAMA_LIKE)
def test_llama_like_roles(family):
    model = build(family)
    groups = group_of_params(model)
    layer = "model.layers.0."
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert groups[f"{layer}self_attn.{proj}.weight"] == "attention"
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert groups[f"{layer}mlp.{proj}.weight"] == "ffn"
    norms = [n for n in groups if "norm" in n]
    assert norms and all(groups[n] == "layernorm" for n in norms)  # RMSNorm, final norm, Qwen3's q/k norms
    assert groups["model.embed_tokens.weight"] == "embeddings"
    assert "lm_head.weight" not in groups  # tied: one parameter, listed once
    assert [n for n, _ in layer_stack(model)] == ["model.layers.0", "model.layers.1"]
    assert arch.adapter_targets(model) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                  "up_proj", "down_proj"])
    kinds = candidate_modules(model)
    assert kinds[f"{layer}mlp.gate_proj.weight"] == "linear_weight"
    assert kinds[f"{layer}input_layernorm.weight"] == "ln_weight"
    assert kinds["model.embed_tokens.weight"] == "embedding"
    if family == "qwen2":  # Qwen2 keeps q/k/v biases
        assert groups[f"{layer}self_attn.q_proj.bias"] == "bias"
    else:
        assert not any(n.endswith("bias") for n in groups)
    roles = arch.projection_roles(model)
    assert roles[f"{layer}self_attn.q_proj"] == "q" and roles[f"{layer}mlp.down_proj"] == "down"


def test_gpt2_roles():
    model = build("gpt2")
    groups = group_of_params(model)
    h = "transformer.h.0."
    assert groups[f"{h}attn.c_attn.weight"] == groups[f"{h}attn.c_proj.weight"] == "attention"
    assert groups[f"{h}mlp.c_fc.weight"] == groups[f"{h}mlp.c_proj.weight"] == "ffn"
    assert groups[f"{h}ln_1.weight"] == groups[f"{h}ln_1.bias"] == groups["transformer.ln_f.weight"] == "layernorm"
    assert groups[f"{h}mlp.c_fc.bias"] == "bias"
    assert groups["transformer.wte.weight"] == groups["transformer.wpe.weight"] == "embeddings"
    assert [n for n, _ in layer_stack(model)] == ["transformer.h.0", "transformer.h.1"]
    assert arch.adapter_targets(model) == ["c_attn", "c_fc", "c_proj"]
    roles = arch.projection_roles(model)
    assert roles[f"{h}attn.c_attn"] == "qkv" and roles[f"{h}attn.c_proj"] == "o" and roles[f"{h}mlp.c_proj"] == "down"
    kinds = candidate_modules(model)
    assert kinds[f"{h}attn.c_attn.weight"] == "conv1d_weight" and kinds[f"{h}ln_1.bias"] == "ln_bias"
    assert arch.transposed_weights(model) >= {f"{h}attn.c_attn.weight", f"{h}mlp.c_fc.weight"}


@pytest.mark.parametrize("family", DECODERS)
def test_tied_embedding_counted_once_and_untied_lm_head_is_an_embedding(family):
    tied, untied = build(family, tie=True), build(family, tie=False)
    unique = {id(p): p.numel() for p in tied.parameters()}
    assert trainable_table(tied)["all"]["total"] == sum(unique.values())
    assert arch.head_prefixes(tied) == arch.head_prefixes(untied) == ()
    lm = [n for n in group_of_params(untied) if n.startswith("lm_head")]
    assert lm == ["lm_head.weight"] and group_of_params(untied)["lm_head.weight"] == "embeddings"
    table = trainable_table(untied)
    assert table["embeddings"]["total"] - trainable_table(tied)["embeddings"]["total"] == untied.lm_head.weight.numel()


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_classifier_head_is_score(family):
    model = build(family, head="classification")
    groups = group_of_params(model)
    assert arch.head_prefixes(model) == ("score.",)
    assert groups["score.weight"] == "head"
    assert sum(1 for g in groups.values() if g == "head") == 1


def test_norm_detection():
    class T5LayerNorm(nn.Module):  # weight only, mean-free: an RMSNorm by structure
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))
            self.variance_epsilon = 1e-5

    assert arch.is_norm(T5LayerNorm()) and arch.norm_kind(T5LayerNorm()) == "rmsnorm"
    assert arch.norm_eps(T5LayerNorm()) == 1e-5
    assert arch.is_norm(nn.LayerNorm(4)) and arch.norm_kind(nn.LayerNorm(4)) == "layernorm"
    assert not arch.is_norm(nn.BatchNorm1d(4)) and not arch.is_norm(nn.Linear(4, 4))


def test_encoder_groups_unchanged(tiny_models):
    """The structural roles give the encoders the groups the old name rules gave (BART's shared embedding
    table is now an embedding rather than 'other')."""
    from sftune.models import load_model

    def by_name(name, head):
        low = name.lower()
        if name.startswith(head):
            return "head"
        if "layernorm" in low or "layer_norm" in low:
            return "layernorm"
        if low.endswith("bias"):
            return "bias"
        if "embed" in low or name == "model.shared.weight":
            return "embeddings"
        if "attention" in low or "attn" in low:
            return "attention"
        if "intermediate" in low or ".output.dense" in low or "fc1" in low or "fc2" in low:
            return "ffn"
        return "other"

    for family, path in tiny_models.items():
        model = load_model(str(path), 2)
        head = arch.head_prefixes(model)
        got = group_of_params(model)
        assert got == {n: by_name(n, head) for n in got}, family
