"""DPS Dense and DPS Mix (methods.md section 3): schedule, selection, mixing, mask modes, memory, checkpoints,
and short end-to-end runs. Unit tests drive the hooks on tiny modules in the order the training loop uses."""

import copy
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAMILIES
from sftune.engine.optim import merge_groups
from sftune.errors import UsageError
from sftune.methods.base import RunContext
from sftune.methods.dps_common import (
    addcmul_bf16_,
    cycle_of,
    is_stage_two,
    keep_count,
    sr_noise,
    stage_bounds,
    stage_length,
    stage_of,
    top_mask,
)
from sftune.methods.dps_dense import DPSDense
from sftune.methods.dps_mix import DPSMix, frequency_penalty_applies, mix_scores
from sftune.ops.column_mix import ColumnMix
from sftune.optim import MaskedAdamW


# ------------------------------------------------------------------------------------------- harness
class Tiny(nn.Module):
    """Embedding, two Linears (the second is the 'head'), a LayerNorm: every kind DPS must tell apart."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.classifier = nn.Linear(5, 3)

    def forward(self, ids):
        return self.classifier(torch.tanh(self.norm(self.lin(self.emb(ids).mean(1)))))


def tiny(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 11, (4, 3), generator=g), torch.randint(0, 3, (4,), generator=g)


def make(cls, model, T, mode="grad", seed=0, lr=1e-2, wd=0.01, head_prefixes=(), **opts):
    method = cls(cls.Options(**opts), mode)
    cfg = SimpleNamespace(train=SimpleNamespace(seed=seed, precision="no"))
    method.setup(RunContext(model=model, task=None, config=cfg, accelerator=None, train_loader=None,
                            total_steps=T, groups={}, head=head_prefixes))
    groups = [{"params": [p], "names": [n], "lr": lr, "weight_decay": 0.0 if n.endswith("bias") else wd}
              for n, p in model.named_parameters()]
    groups = merge_groups(method.param_groups(groups))
    opt = MaskedAdamW(groups, lr=lr) if mode == "update" else torch.optim.AdamW(groups, lr=lr)
    method.on_optimizer(opt)
    return method, opt


def step(method, model, opt, t, grads=None):
    """One optimizer step in the loop's order; returns the step's gradients (after the method's hooks)."""
    method.before_forward(t)
    ids, labels = batch(t)
    F.cross_entropy(model(ids), labels).backward()
    if grads is not None:
        grads[t] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    method.after_backward(t)
    if not method.optimizer_step(opt):
        opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(t)


MASKED = ("lin.weight", "classifier.weight")


# ------------------------------------------------------------------------------------------ schedule
def test_stage_schedule_by_hand():
    U = stage_length(23, 0.2)  # int(4.6)
    assert U == 4
    stages = [stage_of(t, U) for t in range(1, 24)]
    assert stages == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [6] * 3  # short trailing Stage II
    assert [is_stage_two(s) for s in (1, 2, 3, 6)] == [False, True, False, True]
    assert [cycle_of(s) for s in (1, 2, 3, 4, 5, 6)] == [1, 1, 2, 2, 3, 3]
    assert stage_bounds(6, U, 23) == (21, 23)
    U = stage_length(19, 0.2)  # int(3.8)
    assert U == 3
    assert [stage_of(t, U) for t in range(16, 20)] == [6, 6, 6, 7]  # a one-step trailing Stage I
    assert stage_bounds(7, U, 19) == (19, 19) and not is_stage_two(7)


def test_stage_length_is_at_least_one():
    assert stage_length(4, 0.05) == 1  # int(0.2) = 0 would divide by zero: sftune uses 1
    assert [stage_of(t, 1) for t in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_options_are_checked():
    for bad in ({"p": 1.0}, {"p": -0.1}, {"ur": 0.0}, {"ur": 1.5}):
        with pytest.raises(UsageError):
            DPSDense(DPSDense.Options(**bad))
    with pytest.raises(UsageError):
        DPSMix(DPSMix.Options(freq_penalty="sometimes"))


# ----------------------------------------------------------------------------------------- selection
def test_budget_is_exact_ceil_of_decimal_p():
    assert keep_count(10, 0.7) == 3  # float 1 - 0.7 = 0.30000000000000004 would give 4
    assert keep_count(10, 0.3) == 7
    assert keep_count(3, 0.5) == 2  # ceil(1.5)
    assert keep_count(12, 0.1) == 11  # ceil(10.8)
    assert keep_count(6, 0.0) == 6


def test_top_mask_by_hand_with_deterministic_ties():
    g = torch.tensor([[3.0, 1.0, 2.0], [2.0, 5.0, 0.0]])
    # keep ceil(0.5 * 6) = 3: 5 and 3, then the tie at 2 goes to the lower flat index (0, 2) over (1, 0)
    assert torch.equal(top_mask(g, 0.5), torch.tensor([[True, False, True], [False, True, False]]))
    g = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [2.0, 0.5, 0.5, 0.5]])
    m = top_mask(g, 0.3)  # ceil(0.7 * 12) = 9: the 2.0, the four 1.0s, then four of seven 0.5s, lowest first
    assert int(m.sum()) == 9
    assert torch.equal(m, torch.tensor([[True] * 4, [True] * 4, [True, False, False, False]]))
    assert torch.equal(top_mask(g.to(torch.bfloat16), 0.3), m)


# ----------------------------------------------------------------------------------------------- GAM
def test_bf16_gam_rounds_once_to_nearest_or_stochastically():
    g = torch.tensor([3.0, 1e-3, 0.5])
    acc = torch.tensor([1.0, 2.0, 0.0], dtype=torch.bfloat16)
    want = (acc.float() + g * g).to(torch.bfloat16)
    assert torch.equal(addcmul_bf16_(acc, g, chunk_size=2), want)  # chunking changes nothing
    # equal increments: nearest stalls at ~2^8 of them, stochastic rounding stays unbiased
    gen = torch.Generator().manual_seed(0)
    inc = torch.full((20000,), 0.01)
    nearest = torch.zeros(20000, dtype=torch.bfloat16)
    stochastic = torch.zeros(20000, dtype=torch.bfloat16)
    for _ in range(1000):
        addcmul_bf16_(nearest, inc, 1 << 12)
        noise, offsets = sr_noise(gen, torch.device("cpu"), 5, 1 << 12)
        addcmul_bf16_(stochastic, inc, 1 << 12, noise, offsets)
    assert nearest.float().mean() < 0.04  # the true sum is 0.1
    assert abs(stochastic.float().mean().item() - 0.1) < 0.001
    exact = torch.tensor([0.5, 2.0], dtype=torch.bfloat16)  # representable sums are never perturbed
    noise, offsets = sr_noise(gen, torch.device("cpu"), 1, 4)
    assert torch.equal(addcmul_bf16_(exact, torch.tensor([0.5, 0.0]), 4, noise, offsets),
                       torch.tensor([0.75, 2.0], dtype=torch.bfloat16))


def test_multi_tensor_bf16_addcmul_is_the_chunked_round_to_nearest():
    """The GPU's GAM update (one _foreach_addcmul_ on the bfloat16 accumulators) is bitwise addcmul_bf16_."""
    torch.manual_seed(0)
    gams = [(torch.rand(300, 70) * 3).to(torch.bfloat16), torch.rand(1000).to(torch.bfloat16)]
    grads = [torch.randn(300, 70) * 0.3, torch.randn(1000) * 1e-3]
    chunked, fused = [g.clone() for g in gams], [g.clone() for g in gams]
    for _ in range(3):
        for acc, g in zip(chunked, grads):
            addcmul_bf16_(acc, g, 1 << 12)
        torch._foreach_addcmul_(fused, grads, grads)
    assert all(torch.equal(a, b) for a, b in zip(chunked, fused))
    from sftune.methods.dps_common import _multi_tensor_gam_agrees, multi_tensor_gam

    assert _multi_tensor_gam_agrees("cpu")  # the probe an accelerator runs once before using the call
    assert not multi_tensor_gam(torch.device("cpu"))  # the CPU keeps the faster chunked update


def test_default_gam_is_bf16_round_to_nearest_of_the_float32_sum():
    model = tiny()
    method, opt = make(DPSDense, model, T=8, ur=0.5)  # U = 4
    grads = {}
    want = {n: torch.zeros_like(dict(model.named_parameters())[n], dtype=torch.bfloat16) for n in MASKED}
    for t in (1, 2, 3):
        step(method, model, opt, t, grads)
        for n in MASKED:
            want[n] = (want[n].float() + grads[t][n] ** 2).to(torch.bfloat16)
    assert all(method.gam[n].dtype == torch.bfloat16 and torch.equal(method.gam[n], want[n]) for n in MASKED)


# ------------------------------------------------------------------------------------------- dense
def test_dense_candidates_are_linear_weights_only():
    model = tiny()
    method, _ = make(DPSDense, model, T=8)
    assert set(method.candidates) == set(MASKED)  # no bias, LayerNorm or embedding


def test_dense_gam_masks_and_reset_per_cycle():
    model = tiny()
    T = 12
    method, opt = make(DPSDense, model, T=T, ur=0.25, p=0.5, gam_dtype="float32")  # U = 3
    grads = {}
    seen = {}
    for t in range(1, T + 1):
        step(method, model, opt, t, grads)
        seen[t] = {n: m.clone() for n, m in method.stage_masks.items()}
        if stage_of(t, 3) % 2:  # Stage I: G is the sum of this cycle's squared gradients so far
            first = (stage_of(t, 3) - 1) * 3 + 1
            for n in MASKED:
                want = sum(grads[s][n] ** 2 for s in range(first, t + 1))
                assert torch.allclose(method.gam[n], want, rtol=1e-6, atol=0)
            assert seen[t] == {}
    for first, last in ((4, 6), (10, 12)):  # the Stage II masks come from their own cycle's Stage I
        for n in MASKED:
            gam = sum(grads[s][n] ** 2 for s in range(first - 3, first))
            want = top_mask(gam, 0.5)
            assert int(want.sum()) == math.ceil(0.5 * gam.numel())
            for t in range(first, last + 1):
                assert torch.equal(seen[t][n], want)  # fixed for the stage
    assert not torch.equal(seen[4]["lin.weight"], seen[10]["lin.weight"])
    assert method.gam == {}  # freed once the Stage II mask exists


def test_dense_grad_mode_masks_gradients_before_clipping():
    model = tiny()
    method, opt = make(DPSDense, model, T=4, ur=0.5, p=0.5)  # U = 2: Stage II = steps 3, 4
    for t in (1, 2):
        step(method, model, opt, t)
    method.before_forward(3)
    ids, labels = batch(3)
    F.cross_entropy(model(ids), labels).backward()
    method.after_backward(3)
    for n, p in model.named_parameters():
        if n in MASKED:
            assert torch.equal(p.grad != 0, method.stage_masks[n] & (p.grad != 0))
            assert bool((p.grad[~method.stage_masks[n]] == 0).all())
        else:
            assert n not in method.masks


def test_head_option_leaves_the_head_dense():
    method, _ = make(DPSMix, tiny(), T=8, head_prefixes=("classifier.",), head=False)
    assert set(method.candidates) == {"lin.weight"}
    assert set(method.param_of) == {"lin"}


# --------------------------------------------------------------------------------------------- mix
def test_column_mix_element_mask_by_hand():
    lin = nn.Linear(2, 2)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    m = torch.tensor([[True, False], [False, True]])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.zero_()
    mix = ColumnMix({"l": lin})
    mix.set("l", s, m, 2.0)
    x = torch.tensor([[1.0, 1.0]])
    y = lin(x)
    w_eff = torch.tensor([[1.0 + 2 * 0.0, 1.0], [1.0, 0.0 + 2 * 4.0]]) + torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(w_eff, s + m * (w - s) * 2)
    assert torch.allclose(y, x @ w_eff.t())
    y.sum().backward()
    assert torch.equal(lin.weight.grad, torch.ones(2, 1) @ x * m)  # h * M, no scale


def test_mix_stage_one_columns_weights_and_accumulators():
    model = tiny()
    T, p = 8, 0.5
    method, opt = make(DPSMix, model, T=T, mode="grad", ur=0.25, p=p, gam_dtype="float32")  # U = 2
    w0 = {n: dict(model.named_parameters())[n].detach().clone() for n in MASKED}
    grads, rs = {}, {}
    for t in (1, 2):
        method.before_forward(t)
        rs[t] = {n: r.clone() for n, r in method._r.items()}
        assert rs[t]["lin.weight"].shape == (6,) and rs[t]["classifier.weight"].shape == (5,)
        # the forward computes with W_eff = W0 + R (W - W0) / (1 - p), per input column
        x = torch.randn(2, 6)
        w = model.lin.weight.detach()
        w_eff = w0["lin.weight"] + rs[t]["lin.weight"].float() * (w - w0["lin.weight"]) / (1 - p)
        assert torch.allclose(model.lin(x), x @ w_eff.t() + model.lin.bias.detach(), atol=1e-6)
        ids, labels = batch(t)
        F.cross_entropy(model(ids), labels).backward()
        for n in MASKED:  # gradient h * R: dropped columns get exactly zero
            grad = dict(model.named_parameters())[n].grad
            assert bool((grad[:, ~rs[t][n]] == 0).all())
        grads[t] = {n: dict(model.named_parameters())[n].grad.clone() for n in MASKED}
        method.after_backward(t)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n in MASKED:
        assert torch.allclose(method.gam[n], grads[1][n] ** 2 + grads[2][n] ** 2, rtol=1e-6, atol=0)
        assert torch.equal(method.fam[n], rs[1][n].int() + rs[2][n].int())
    # Stage II (step 3): masks from G / max(F, 1) (U = 2 < 50: no frequency penalty)
    gam, fam = dict(method.gam), dict(method.fam)
    method.before_forward(3)
    assert method.gam == {} and method.fam == {}
    for n in MASKED:
        assert torch.equal(method.stage_masks[n], top_mask(mix_scores(gam[n], fam[n], 2, False), p))
    # W_eff = S + M (W - S) / (1 - p) with S = the weights at the stage start
    s = model.lin.weight.detach().clone()
    assert torch.equal(method.snapshot["lin.weight"], s)
    with torch.no_grad():
        model.lin.weight.add_(0.1)
    m = method.stage_masks["lin.weight"]
    x = torch.randn(2, 6)
    w_eff = s + m * (model.lin.weight.detach() - s) / (1 - p)
    assert torch.allclose(model.lin(x), x @ w_eff.t() + model.lin.bias.detach(), atol=1e-6)
    model.eval()
    assert torch.allclose(model.lin(x), x @ model.lin.weight.detach().t() + model.lin.bias.detach())  # raw W


def test_mix_accumulators_reset_each_cycle():
    model = tiny()
    method, opt = make(DPSMix, model, T=8, ur=0.25, p=0.3)  # U = 2: Stage I = 1-2, 5-6
    rs = {}
    for t in range(1, 7):
        method.before_forward(t)
        rs[t] = {n: r.clone() for n, r in method._r.items()}
        step(method, model, opt, t)
    for n in MASKED:
        assert torch.equal(method.fam[n], rs[5][n].int() + rs[6][n].int())
    assert not torch.equal(rs[5]["lin.weight"], rs[6]["lin.weight"]) or not torch.equal(
        rs[5]["classifier.weight"], rs[6]["classifier.weight"])  # fresh R every step


def test_frequency_penalty_rule_both_sides():
    assert not frequency_penalty_applies("reference", 49)
    assert frequency_penalty_applies("reference", 50)
    assert frequency_penalty_applies("always", 2) and not frequency_penalty_applies("never", 500)
    gam = torch.tensor([[4.0, 2.0], [6.0, 0.0]])
    fam = torch.tensor([2, 0], dtype=torch.int32)
    assert torch.allclose(mix_scores(gam, fam, 50, False), torch.tensor([[2.0, 2.0], [3.0, 0.0]]))
    e = math.exp(-2 / 50)
    assert torch.allclose(mix_scores(gam, fam, 50, True), torch.tensor([[2.0 * e, 2.0], [3.0 * e, 0.0]]))
    # the method applies it from its own U = int(T * ur)
    assert make(DPSMix, tiny(), T=100, ur=0.5)[0].penalty  # U = 50
    assert not make(DPSMix, tiny(), T=98, ur=0.5)[0].penalty  # U = 49
    assert not make(DPSMix, tiny(), T=100, ur=0.5, freq_penalty="never")[0].penalty


# -------------------------------------------------------------------------------------- mask modes
def _changed_in_stage_two(cls, mode, tiny_bert, **opts):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    model.train()
    method, opt = make(cls, model, T=6, mode=mode, ur=0.34, p=0.3, lr=1e-3, **opts)  # U = 2
    vocab = model.config.vocab_size
    params = dict(model.named_parameters())
    out = []
    for t in range(1, 7):
        g = torch.Generator().manual_seed(t)
        ids = torch.randint(5, vocab, (4, 9), generator=g)
        labels = torch.randint(0, 2, (4,), generator=g)
        before = {n: p.detach().clone() for n, p in params.items()}
        method.before_forward(t)
        model(input_ids=ids, labels=labels).loss.backward()
        method.after_backward(t)
        if not method.optimizer_step(opt):
            opt.step()
        opt.zero_grad(set_to_none=True)
        if is_stage_two(stage_of(t, method.U)):
            out.append({n: (params[n].detach() != before[n], method.stage_masks[n]) for n in method.stage_masks})
    assert set(method.candidates) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                                      for n in [n + ".weight"]}
    return model, method, out


@pytest.mark.parametrize("cls", [DPSDense, DPSMix])
def test_update_mode_changes_exactly_the_selected_entries(cls, tiny_bert):
    _, method, steps = _changed_in_stage_two(cls, "update", tiny_bert)
    assert len(steps) == 2  # steps 3 and 4
    for per_param in steps:
        for n, (changed, mask) in per_param.items():
            assert torch.equal(changed, mask), n
            assert int(mask.sum()) == keep_count(mask.numel(), 0.3)
    _, _, steps = _changed_in_stage_two(cls, "grad", tiny_bert)
    drift = sum(int((changed & ~mask).sum()) for per_param in steps for changed, mask in per_param.values())
    assert drift > 0  # AdamW momentum and weight decay move unselected entries in grad mode


def test_mix_update_mode_holds_w_eff_and_evaluates_it():
    """Update mode keeps W = W_eff: one Stage II step equals the exact step on W with S kept, W_eff = S + M (W - S)
    / (1 - p) (weight decay 0, where the two agree exactly), and training and evaluation see the same weights."""
    p = 0.3
    model = tiny()
    method, opt = make(DPSMix, model, T=6, mode="update", ur=0.34, p=p, wd=0.0)  # U = 2
    for t in (1, 2):
        step(method, model, opt, t)
    method.before_forward(3)
    ids, labels = batch(3)
    model.train()
    train_out = model(ids)
    model.eval()
    assert torch.equal(model(ids), train_out)  # no S and no mixing: train and eval use the same W
    model.train()
    F.cross_entropy(train_out, labels).backward()
    method.after_backward(3)
    w = model.lin.weight
    s = w.detach().clone()
    shadow = s.clone().requires_grad_(True)
    shadow.grad = w.grad.clone()
    ref = MaskedAdamW([shadow], lr=1e-2, weight_decay=0.0)
    ref.state[shadow] = copy.deepcopy(opt.state[w])
    ref.set_mask(shadow, method.stage_masks["lin.weight"])
    ref.step()
    assert method.optimizer_step(opt)
    m = method.stage_masks["lin.weight"]
    want = s + m * (shadow.detach() - s) / (1 - p)
    assert torch.allclose(w.detach(), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(w.detach()[~m], s[~m])
    assert all(g["lr"] == 1e-2 for g in opt.param_groups)  # the scaled lr was restored


# --------------------------------------------------------------------------------- reproducibility
def _run(cls, mode, T, seed=0, stop=None, resume=None):
    """Run steps 1..T (or stop after `stop`, returning the checkpoint); returns masks per step and weights."""
    model = tiny()
    method, opt = make(cls, model, T=T, mode=mode, seed=seed, ur=0.25, p=0.3)
    start = 1
    if resume is not None:
        buf = io.BytesIO(resume["blob"])
        blob = torch.load(buf, weights_only=True)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        method.load_state_dict(blob["method"])
        start = resume["step"] + 1
    masks = {}
    for t in range(start, T + 1):
        step(method, model, opt, t)
        masks[t] = {n: m.clone() for n, m in method.stage_masks.items()}
        if isinstance(method, DPSMix) and method._r:
            masks[t].update({f"R:{n}": r.clone() for n, r in method._r.items()})
        if t == stop:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}, buf)
            return {"blob": buf.getvalue(), "step": t}
    return masks, {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cls,mode", [(DPSDense, "grad"), (DPSDense, "update"), (DPSMix, "grad"), (DPSMix, "update")])
def test_same_seed_same_masks_and_checkpoints_resume_exactly(cls, mode):
    T = 12  # U = 3: Stage II = 4-6, 10-12
    masks, weights = _run(cls, mode, T)
    again, weights2 = _run(cls, mode, T)
    assert all(_same(masks[t], again[t]) for t in masks) and _same(weights, weights2)
    if cls is DPSMix:
        other, _ = _run(cls, mode, T, seed=1)
        assert not _same(masks[1], other[1])
    for stop in (2, 5):  # mid Stage I (GAM, FAM), mid Stage II (masks, snapshot)
        ckpt = _run(cls, mode, T, stop=stop)
        resumed, weights3 = _run(cls, mode, T, resume=ckpt)
        assert all(_same(masks[t], resumed[t]) for t in resumed), stop
        assert _same(weights, weights3), stop


def test_state_dict_is_plain_and_masks_are_packed():
    model = tiny()
    method, opt = make(DPSMix, model, T=8, ur=0.25)
    for t in (1, 2, 3):
        step(method, model, opt, t)
    state = method.state_dict()
    assert state["stage"] == 2 and state["masks"]["lin.weight"].dtype == torch.uint8
    assert state["masks"]["lin.weight"].numel() == math.ceil(30 / 8)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["stage"] == 2


# ------------------------------------------------------------------------------------------ memory
def test_state_bytes_per_masked_weight():
    # wide matrices so the per-column FAM and R round to nothing, as in real models
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 256)
            self.b = nn.Linear(256, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    def run(cls, mode, **opts):
        torch.manual_seed(0)
        model = Wide()
        method, opt = make(cls, model, T=8, mode=mode, ur=0.25, **opts)  # U = 2
        n = method.masked_numel()
        per_stage = {}
        for t in range(1, 7):
            method.before_forward(t)
            F.cross_entropy(model(torch.randn(3, 64)), torch.tensor([0, 1, 0])).backward()
            method.after_backward(t)
            if not method.optimizer_step(opt):
                opt.step()
            opt.zero_grad(set_to_none=True)
            per_stage[stage_of(t, 2)] = {k: v / n for k, v in method.state_bytes().items()}
        return per_stage, sum(method.state_bytes(peak=True).values()) / n

    stages, peak = run(DPSDense, "grad")
    assert stages[1] == {"gam": 2.0, "fam": 0, "mask": 0, "w0": 0, "snapshot": 0}
    assert stages[2] == {"gam": 0, "fam": 0, "mask": 1.0, "w0": 0, "snapshot": 0}
    assert peak == 2.0
    stages, peak = run(DPSMix, "update")
    assert stages[1]["w0"] == 4.0 and stages[1]["gam"] == 2.0 and stages[1]["snapshot"] == 0
    assert stages[2] == {"gam": 0, "fam": 0, "mask": 1.0, "w0": 0, "snapshot": 0}  # W0 parked on disk
    assert stages[3]["w0"] == 4.0 and stages[3]["gam"] == 2.0  # and back for the next Stage I
    assert 6.0 <= peak <= 6.1
    stages, peak = run(DPSMix, "grad")
    assert stages[2] == {"gam": 0, "fam": 0, "mask": 1.0, "w0": 0, "snapshot": 4.0}
    assert 6.0 <= peak <= 6.1  # Stage I (W0 4 + GAM 2) is the peak; Stage II holds S 4 + M 1
    stages, peak = run(DPSMix, "grad", w0_store="memory")  # W0 resident through Stage II
    assert stages[2]["snapshot"] == 4.0 and stages[2]["w0"] == 4.0
    assert 9.0 <= peak <= 9.1


@pytest.mark.parametrize("mode", ["grad", "update"])
def test_parked_w0_gives_the_same_run_as_resident_w0(mode):
    """w0_store=disk writes W0 at the first Stage II and reads it back at each Stage I: the weights after
    three cycles are bitwise those of a run that kept W0 in memory."""
    finals = {}
    for store in ("disk", "memory"):
        torch.manual_seed(0)
        model = tiny()
        method, opt = make(DPSMix, model, T=12, mode=mode, ur=1 / 6, p=0.3, w0_store=store)  # U = 2
        for t in range(1, 13):
            step(method, model, opt, t)
            if store == "disk" and t in (3, 4, 7, 8):  # Stage II: nothing resident
                assert method.w0 == {}
        finals[store] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in finals["disk"]:
        assert torch.equal(finals["disk"][n], finals["memory"][n]), n


def test_parked_tensors_round_trip_every_dtype(tmp_path):
    from sftune.ops.parking import ParkedTensors

    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(7).to(torch.bfloat16),
               "i16": torch.randint(-300, 300, (4, 4), dtype=torch.int16), "bool": torch.rand(9) > 0.5,
               "strided": torch.randn(6, 4).t()}
    parked = ParkedTensors(str(tmp_path))
    parked.park(tensors)
    assert list(tmp_path.iterdir()) == []  # unlinked: no name on disk
    for _ in range(2):  # read back as often as needed, fresh tensors each time
        back = parked.load()
        for n, t in tensors.items():
            assert back[n].dtype == t.dtype and back[n].shape == t.shape and torch.equal(back[n], t)
            assert back[n].data_ptr() != t.data_ptr()
    parked.close()
    with pytest.raises(RuntimeError):
        parked.load()


def test_w0_is_dropped_when_no_stage_one_is_left():
    model = tiny()
    method, opt = make(DPSMix, model, T=4, ur=0.5)  # U = 2: Stage II = 3-4 is the last stage
    for t in (1, 2, 3):
        step(method, model, opt, t)
    assert method.w0 == {} and method.state_bytes()["w0"] == 0


# -------------------------------------------------------------------------------------- end to end
FAST = ("--batch-size", "8", "--set", "data.train_size=48", "--set", "train.log_every=2",
        "--set", "data.eval_batch_size=128")


@pytest.mark.parametrize("method", ["dps-dense", "dps-mix"])
@pytest.mark.parametrize("mode", ["grad", "update"])
def test_cli_runs_two_cycles(cli, tiny_bert, glue_dir, tmp_path, method, mode):
    out = tmp_path / "run"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", method, "--mask-mode", mode,
                          "--max-steps", "8", "--set", "method.ur=0.25", *FAST, "-o", out)
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["type"] == "train"}
    assert [train[t]["dps/stage"] for t in (2, 4, 6, 8)] == [1.0, 2.0, 3.0, 4.0]  # U = 2: two cycles
    for t in (2, 6):
        assert train[t]["selected"] == 1.0
    for t in (4, 8):
        assert 0.3 < train[t]["selected"] < 1.0
        if mode == "update":
            assert train[t]["changed"] <= train[t]["selected"] + 1e-12
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs(cli, tiny_models, glue_dir, tmp_path, family):
    i = FAMILIES.index(family)
    method, mode = ("dps-mix", "dps-dense")[i % 2], ("grad", "update")[(i // 2) % 2]
    code, _, stderr = cli("train", tiny_models[family], "rte", "--data-dir", glue_dir, "--method", method,
                          "--mask-mode", mode, "--max-steps", "4", "--batch-size", "4", "--set", "method.ur=0.25",
                          "--set", "data.train_size=16", "--set", "data.eval_batch_size=128", "-o", tmp_path / "r",
                          "--format", "json")
    assert code == 0, stderr


# ------------------------------------------------------------------------------ GAM precision (real)
@pytest.mark.slow
def test_bf16_gam_keeps_the_fp32_top_set_on_real_gradients(minilm_path, glue_dir):
    """bfloat16 GAM vs float32 on MiniLM's real RTE gradients: the per-matrix top-70% sets agree >= 99%."""
    from sftune.config import DataConfig
    from sftune.data import load_splits, make_loader, tokenize
    from sftune.models import linear_weights, load_model, load_tokenizer
    from sftune.tasks import get_task

    task = get_task("rte")
    tok = load_tokenizer(minilm_path)
    train = load_splits(task, DataConfig(data_dir=str(glue_dir))).train.select(range(24))
    loader = make_loader(tokenize(train, tok, task, 64), tok, 8, shuffle_seed=0)
    torch.manual_seed(0)
    model = load_model(minilm_path, 2, task.label_names, dropout=0.0)
    weights = linear_weights(model)
    g32 = {n: torch.zeros_like(w) for n, w in weights.items()}
    g16 = {n: torch.zeros_like(w, dtype=torch.bfloat16) for n, w in weights.items()}
    for b in loader:
        b = dict(b)
        b.pop("idx", None)
        model(**b).loss.backward()
        for n, w in weights.items():
            g32[n].addcmul_(w.grad, w.grad)
            addcmul_bf16_(g16[n], w.grad, 1 << 18)  # the default GAM (bfloat16, round to nearest)
        model.zero_grad()
    inter = keep = 0
    for n in weights:
        a, b = top_mask(g32[n], 0.3), top_mask(g16[n], 0.3)
        inter += int((a & b).sum())
        keep += int(a.sum())
    assert inter / keep >= 0.99
