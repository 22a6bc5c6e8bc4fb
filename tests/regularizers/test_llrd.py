"""llrd: the optimizer's groups carry lr * eta^(l+1) for layer l from the top, embeddings lowest, head at lr."""

import json

import pytest
import torch

from decoder.decoder_models import config_model, decoder_config
from sftune.config import build
from sftune.engine.loop import Trainer
from sftune.models import head_prefixes, load_model
from sftune.regularizers.llrd import depth_factors


def lrs_by_name(trainer):
    # initial_lr: the rate the scheduler scales (warmup has already set the current lr to 0)
    return {n: g["initial_lr"] for g in trainer.optimizer.param_groups for n in g["names"]}


def test_optimizer_groups_carry_the_decayed_rates(tiny_bert, glue_dir):
    lr, eta = 1e-3, 0.5
    tree = {"model": {"name": str(tiny_bert)}, "task": "rte", "method": {"name": "full"},
            "regs": [{"name": "llrd", "eta": eta}],
            "data": {"data_dir": str(glue_dir), "train_size": 16, "eval_batch_size": 128},
            "train": {"max_steps": 2, "batch_size": 8, "lr": lr}}
    trainer = Trainer(build(tree))
    trainer.build()
    lrs = lrs_by_name(trainer)
    assert len(lrs) == sum(1 for _ in trainer.model.parameters())
    for name, value in lrs.items():
        if name.startswith(("classifier.", "bert.pooler.")):
            expected = lr
        elif name.startswith("bert.encoder.layer.1."):  # top layer, l = 0
            expected = lr * eta
        elif name.startswith("bert.encoder.layer.0."):  # l = 1
            expected = lr * eta ** 2
        else:  # embeddings: eta^(N+1), N = 2
            assert name.startswith("bert.embeddings."), name
            expected = lr * eta ** 3
        assert value == pytest.approx(expected), name
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(lr)  # the logged lr is the peak one
    # The schedule scales every group alike: its base rates are the decayed ones.
    assert sorted(trainer.scheduler.base_lrs) == sorted(g["initial_lr"] for g in trainer.optimizer.param_groups)
    # Weight decay is kept per group (no decay on biases and LayerNorm).
    groups = {n: g for g in trainer.optimizer.param_groups for n in g["names"]}
    assert groups["bert.encoder.layer.1.output.dense.bias"]["weight_decay"] == 0.0
    assert groups["bert.encoder.layer.1.output.dense.weight"]["weight_decay"] > 0.0


def test_bart_depths_run_encoder_then_decoder(tiny_models):
    model = load_model(str(tiny_models["bart"]), 2)
    f = depth_factors(model, head_prefixes(model), 0.5)
    assert f["classification_head.dense.weight"] == 1.0
    assert f["model.decoder.layers.1.fc1.weight"] == 0.5
    assert f["model.decoder.layers.0.fc1.weight"] == 0.25
    assert f["model.encoder.layers.1.fc1.weight"] == 0.125
    assert f["model.encoder.layers.0.fc1.weight"] == 0.0625
    assert f["model.shared.weight"] == f["model.encoder.embed_positions.weight"] == 0.5 ** 5
    # layernorm_embedding is registered after `layers` but normalises the embeddings before them: embeddings' rate.
    for side in ("encoder", "decoder"):
        assert f[f"model.{side}.layernorm_embedding.weight"] == f[f"model.{side}.layernorm_embedding.bias"] == 0.5 ** 5


def rates_by_hand(names, expected: dict[str, float]) -> dict[str, float]:
    """Each parameter's multiplier from the one prefix in `expected` it starts with (exactly one must match)."""
    out = {}
    for name in names:
        (prefix,) = [p for p in expected if name.startswith(p)]
        out[name] = expected[prefix]
    return out


@pytest.mark.parametrize("head", ["causal-lm", "seq"])
def test_a_llama_final_norm_trains_at_the_heads_rate(head):
    eta = 0.5
    model = config_model(decoder_config("llama", 50, 1, 2, tie=False), head=head)
    model.train()
    rng = torch.get_rng_state()
    f = depth_factors(model, head_prefixes(model), eta)
    # N = 2 layers: the top layer (l = 0) eta^1, layer 0 (l = 1) eta^2, the embeddings eta^3; the final norm
    # (model.norm, on the top layer's output) and the untied lm_head / the score head at lr.
    expected = {"model.embed_tokens.": 0.125, "model.layers.0.": 0.25, "model.layers.1.": 0.5, "model.norm.": 1.0,
                "lm_head." if head == "causal-lm" else "score.": 1.0}
    assert f == rates_by_hand([n for n, _ in model.named_parameters()], expected)
    assert f["model.norm.weight"] == 1.0 and f["model.layers.1.post_attention_layernorm.weight"] == 0.5
    # Finding the final norm ran the model once without drawing random numbers or leaving it in eval mode.
    assert torch.equal(torch.get_rng_state(), rng) and all(m.training for m in model.modules())


@pytest.mark.parametrize("head", ["causal-lm", "seq"])
def test_a_gpt2_ln_f_trains_at_the_heads_rate(head):
    eta = 0.5
    model = config_model(decoder_config("gpt2", 50, 1, 2, tie=True), head=head)
    f = depth_factors(model, head_prefixes(model), eta)
    # Tied lm_head: the input embedding's tensor, at its rate eta^3 (N = 2). ln_f (weight and bias): lr.
    expected = {"transformer.wte.": 0.125, "transformer.wpe.": 0.125, "transformer.h.0.": 0.25,
                "transformer.h.1.": 0.5, "transformer.ln_f.": 1.0, "score.": 1.0}
    assert f == rates_by_hand([n for n, _ in model.named_parameters()], expected)
    assert f["transformer.ln_f.weight"] == f["transformer.ln_f.bias"] == 1.0


def test_electra_preset_applies_llrd(cli, tiny_models, glue_dir, tmp_path):
    out = tmp_path / "electra"
    code, _, stderr = cli("train", tiny_models["electra"], "rte", "--preset", "electra", "--data-dir", glue_dir,
                          "--max-steps", "2", "--batch-size", "8", "--set", "data.train_size=16",
                          "--set", "data.eval_batch_size=128", "-o", out)
    assert code == 0, stderr
    assert "name: llrd" in (out / "config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["llrd"] == {"eta": 0.9, "layers": 2}


def test_a_base_model_that_cannot_run_on_input_ids_alone_is_said_not_silent(monkeypatch):
    model = config_model(decoder_config("llama", 50, 1, 2, tie=False), head="causal-lm")

    def needs_more(*args, **kwargs):
        raise TypeError("needs pixel_values")

    monkeypatch.setattr(model.model, "forward", needs_more)
    said = r"LlamaModel on input_ids alone \(TypeError: needs pixel_values\).*model\.norm"
    with pytest.warns(UserWarning, match=said):
        f = depth_factors(model, head_prefixes(model), 0.5)
    assert f["model.norm.weight"] == 0.125  # then: the embeddings' rate (eta^3, N = 2), as the warning says
