"""Plug-ins that act on module roles use the structural roles (sftune.architecture), not BERT names: the
attention method trains exactly the attention projections of BERT, Llama-like decoders and GPT-2; layer-wise
LR decay puts an untied lm_head at the top rate and a tied one at the embedding's. Tiny config-built models."""

from __future__ import annotations

import pytest
from decoder_models import DECODERS, config_model, decoder_config

from sftune.errors import UsageError
from sftune.methods.attention import Attention, AttentionOptions
from sftune.methods.base import RunContext
from sftune.models import group_of_params, head_prefixes
from sftune.regularizers.llrd import depth_factors

LAYERS = (0, 1)  # decoder_config builds 2 layers


def build(family: str, head: str = "causal-lm", tie: bool = True):
    from transformers import AutoConfig

    if family == "bert":
        config = AutoConfig.for_model("bert", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)
    else:
        config = decoder_config(family, 64, 1, 2, tie)
    return config_model(config, head)


def attention_trains(model, **options) -> set[str]:
    """The parameters the attention method leaves trainable on `model` (setup, then its trainable votes)."""
    method = Attention(AttentionOptions(**options))
    method.setup(RunContext(model=model, task=None, config=None, accelerator=None, train_loader=None, total_steps=1,
                            groups=group_of_params(model), head=head_prefixes(model)))
    return {n for n, p in model.named_parameters() if method.trainable(n, p)}


def expected_attention(family: str) -> set[str]:
    """Written out by hand per family: Q, K, V (or GPT-2's fused c_attn) and the output projection."""
    if family == "bert":
        return {f"bert.encoder.layer.{i}.attention.{m}.{t}" for i in LAYERS
                for m in ("self.query", "self.key", "self.value", "output.dense") for t in ("weight", "bias")}
    if family == "gpt2":  # attn.c_proj is the attention output; mlp.c_proj (the MLP's down projection) is not
        return {f"transformer.h.{i}.attn.{m}.{t}" for i in LAYERS for m in ("c_attn", "c_proj")
                for t in ("weight", "bias")}
    names = {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in LAYERS for p in "qkvo"}
    if family == "qwen2":  # Qwen2 keeps biases on q, k and v (not o)
        names |= {f"model.layers.{i}.self_attn.{p}_proj.bias" for i in LAYERS for p in "qkv"}
    return names  # Qwen3's q_norm / k_norm sit in the attention block but are norms: not trained


@pytest.mark.parametrize("family", DECODERS)
def test_attention_method_trains_the_attention_projections_of_a_decoder_lm(family):
    model = build(family)
    assert attention_trains(model) == expected_attention(family)  # no lm_head, no MLP, no norm


@pytest.mark.parametrize("family", ("bert", "llama", "gpt2"))
def test_attention_method_adds_the_classification_head(family):
    model = build(family, head="classification")
    head = {"classifier.weight", "classifier.bias"} if family == "bert" else {"score.weight"}
    assert attention_trains(model) == expected_attention(family) | head


def test_attention_modules_option_narrows_the_projections():
    model = build("llama")
    assert attention_trains(model, modules=["q_proj", "V_PROJ"]) == {
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in LAYERS for p in "qv"}
    with pytest.raises(UsageError, match="method.modules=mlp matches no attention projection"):
        attention_trains(model, modules=["mlp"])  # the MLP is not widened into the set


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_llrd_puts_an_untied_lm_head_at_the_top_and_a_tied_one_at_the_embedding(family):
    eta = 0.5  # N = 2 layers: top layer eta, bottom eta^2, embeddings eta^3
    embed, norm, layer = (("model.embed_tokens.weight", "model.norm.weight", "model.layers") if family == "llama"
                          else ("transformer.wte.weight", "transformer.ln_f.weight", "transformer.h"))
    untied = build(family, tie=False)
    f = depth_factors(untied, head_prefixes(untied), eta)
    assert f["lm_head.weight"] == 1.0  # the output layer trains at lr, like a head
    assert f[embed] == eta ** 3
    assert f[norm] == 1.0  # the final norm, on the top layer's output: trains with the head it feeds
    assert {f[n] for n in f if n.startswith(f"{layer}.1.")} == {eta}
    assert {f[n] for n in f if n.startswith(f"{layer}.0.")} == {eta ** 2}
    tied = build(family, tie=True)
    f = depth_factors(tied, head_prefixes(tied), eta)
    assert "lm_head.weight" not in f and f[embed] == eta ** 3  # one tensor, counted once, at the embedding's rate
    assert tied.get_output_embeddings().weight is dict(tied.named_parameters())[embed]
    classifier = build(family, head="classification")
    assert depth_factors(classifier, head_prefixes(classifier), eta)["score.weight"] == 1.0
