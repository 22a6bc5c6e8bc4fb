"""Parity on tiny decoders, expected values by hand: mu of an RMSNorm input, I^2 of GPT-2's Conv1D weights
(whole, block by block, entry by entry), and column mixing of a Conv1D."""

from __future__ import annotations

import torch
from decoder_models import decoder_config
from torch import nn
from transformers.pytorch_utils import Conv1D

from sftune.methods.importance import ImportanceWeights, InputMeans, PaddedLayout, squared_importance_
from sftune.ops.column_mix import ColumnMix


def test_rmsnorm_mu_is_the_mean_abs_of_the_normalised_input_over_real_tokens():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(decoder_config("llama", 64, 1, 2)).train()
    name = "model.layers.1.post_attention_layernorm"
    norm = model.get_submodule(name)
    seen = []
    norm.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    means = InputMeans(model, {name})
    ids = torch.randint(3, 64, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    model(input_ids=ids, attention_mask=mask)
    x = seen[0]
    eps = model.config.rms_norm_eps
    x_hat = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    rows = [x_hat[b, t] for b in range(2) for t in range(5) if mask[b, t]]
    expected = torch.stack(rows).abs().mean(0)
    assert torch.allclose(means.pop(name), expected, atol=1e-6)


def test_conv1d_importance_broadcasts_mu_over_the_input_rows():
    torch.manual_seed(0)
    w, g, mu = torch.randn(3, 5), torch.randn(3, 5), torch.rand(3)  # Conv1D weight: [in=3, out=5]
    out = torch.empty(3, 5)
    squared_importance_(out, "conv1d_weight", w, g, mu)
    expected = torch.tensor([[(mu[i] * w[i, j] * g[i, j]).item() ** 2 for j in range(5)] for i in range(3)])
    assert torch.allclose(out, expected)
    # The same matrix as an nn.Linear weight ([out, in] = w^T) scores the same entries.
    linear = torch.empty(5, 3)
    squared_importance_(linear, "linear_weight", w.t().contiguous(), g.t().contiguous(), mu)
    assert torch.allclose(linear.t(), out)


def test_block_reads_of_conv1d_scores_equal_the_dense_scores():
    torch.manual_seed(1)
    params = {}
    for name, shape in (("a", (6, 8)), ("b", (5, 7))):  # B=4 divides 8 (whole rows) but not 7 (entries)
        p = nn.Parameter(torch.randn(shape))
        p.grad = torch.randn(shape)
        params[name] = p
    kinds = {"a": "conv1d_weight", "b": "conv1d_weight"}
    mus = {"a": torch.rand(6), "b": torch.rand(5)}
    layout = PaddedLayout([p.numel() for p in params.values()], 4, "cpu")
    weights = ImportanceWeights(params, kinds, mus, layout)
    dense = weights.dense()
    for name, start in zip(params, layout.starts):
        p = params[name]
        by_hand = (mus[name].unsqueeze(1) * p.detach() * p.grad).square().reshape(-1)
        assert torch.allclose(dense[start:start + p.numel()], by_hand)
    real = torch.nonzero(~layout.padding()).squeeze(1)
    assert torch.equal(weights.values(real), dense[real])
    rows = weights.rows(torch.arange(layout.numel // 4), 4).reshape(-1)
    assert torch.equal(rows[real], dense[real])


def test_conv1d_column_mix_equals_the_linear_mix_of_its_transpose():
    torch.manual_seed(2)
    conv, lin = Conv1D(4, 3), nn.Linear(3, 4)  # Conv1D(nf=out, nx=in): weight [3, 4]
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    target = torch.randn(3, 4)  # in Conv1D layout
    cols = torch.tensor([1.0, 0.0, 1.0])
    ColumnMix({"c": conv}).set("c", target, cols, 2.0)
    ColumnMix({"l": lin}).set("l", target.t().contiguous(), cols, 2.0)
    x = torch.randn(2, 5, 3)
    y_conv, y_lin = conv(x), lin(x)
    assert torch.allclose(y_conv, y_lin, atol=1e-6)
    y_conv.square().sum().backward()
    y_lin.square().sum().backward()
    assert torch.allclose(conv.weight.grad, lin.weight.grad.t(), atol=1e-5)
    assert torch.equal(conv.weight.grad[1], torch.zeros(4))  # the dropped input column gets no gradient
    elementwise = (torch.rand(3, 4) > 0.5).float()  # DPS Mix Stage II: a mask of the weight's own shape
    mix = ColumnMix({"c2": conv})
    mix.set("c2", target, elementwise, 1.0)
    w_eff = target + elementwise * (conv.weight.detach() - target)
    assert torch.allclose(conv(x), x @ w_eff + conv.bias, atol=1e-6)
