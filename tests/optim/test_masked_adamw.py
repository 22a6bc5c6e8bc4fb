import io
import math

import pytest
import torch

from sftune.optim import COUNT_MAX, MaskedAdamW, masked_adamw_step_

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.01


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def set_grads(model, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def run(model, opt, steps, masks=None, sched=None):
    for s in range(steps):
        set_grads(model, s)
        if masks is not None:
            for p in model.parameters():
                opt.set_mask(p, masks(p, s))
        opt.step()
        if sched is not None:
            sched.step()


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize(
    "mask_fn",
    [
        None,
        lambda p, s: torch.ones_like(p, dtype=torch.bool),
        lambda p, s: torch.arange(p.numel()),
    ],
    ids=["no-mask", "all-true-bool", "all-indices"],
)
def test_equals_torch_adamw_bitwise(mask_fn):
    ref_model, model = tiny_model(), tiny_model()
    ref = torch.optim.AdamW(ref_model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    opt = MaskedAdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    run(ref_model, ref, 6)
    run(model, opt, 6, masks=mask_fn)
    assert_same(params(model), params(ref_model))
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])
        assert torch.equal(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


def test_fused_dense_matches_torch_fused():
    ref_model, model = tiny_model(), tiny_model()
    ref = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD, fused=True)
    opt = MaskedAdamW(model.parameters(), lr=LR, weight_decay=WD, fused=True)
    run(ref_model, ref, 4)
    run(model, opt, 4)
    assert_same(params(model), params(ref_model))


def test_lambda_lr_scheduler_works_and_matches_torch():
    ref_model, model = tiny_model(), tiny_model()
    ref = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    opt = MaskedAdamW(model.parameters(), lr=LR, weight_decay=WD)
    warm = lambda s: min(1.0, (s + 1) / 3) * max(0.0, 1 - s / 10)  # noqa: E731
    ref_s = torch.optim.lr_scheduler.LambdaLR(ref, warm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warm)
    assert opt.param_groups[0]["initial_lr"] == LR
    run(ref_model, ref, 5, sched=ref_s)
    run(model, opt, 5, masks=lambda p, s: torch.ones_like(p, dtype=torch.bool), sched=sched)
    assert_same(params(model), params(ref_model))
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != LR


@pytest.mark.parametrize("kind", ["bool", "index"])
def test_unselected_entries_bitwise_unchanged(kind):
    model = tiny_model(1)
    opt = MaskedAdamW(model.parameters(), lr=LR, weight_decay=0.1)
    run(model, opt, 2)  # dense steps first: moments are non-zero, so momentum WOULD move them
    g = torch.Generator().manual_seed(5)
    masks = {p: torch.rand(p.shape, generator=g) < 0.3 for p in model.parameters()}
    before = {p: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
              for p in model.parameters()}

    def mask_fn(p, s):
        return masks[p] if kind == "bool" else masks[p].reshape(-1).nonzero().squeeze(1)

    run(model, opt, 4, masks=mask_fn)
    for p in model.parameters():
        w0, m0, v0 = before[p]
        sel = masks[p]
        st = opt.state[p]
        assert torch.equal(p.detach()[~sel], w0[~sel])
        assert torch.equal(st["exp_avg"][~sel], m0[~sel])
        assert torch.equal(st["exp_avg_sq"][~sel], v0[~sel])
        assert st["step_count"].dtype == torch.int16
        assert bool((st["step_count"][~sel] == 2).all()) and bool((st["step_count"][sel] == 6).all())
        assert bool((p.detach()[sel] != w0[sel]).all())  # and the selected ones did move


def test_hand_computed_per_entry_bias_correction():
    """2x3 parameter; entries selected different numbers of times; compare with AdamW by hand."""
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.05
    w0 = torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]])
    p = torch.nn.Parameter(w0.clone())
    opt = MaskedAdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    grads = [torch.tensor([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]]) * (s + 1) for s in range(4)]
    masks = [
        torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool),
        torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool),
        torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool),
        torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool),
    ]
    for g, m in zip(grads, masks):
        p.grad = g.clone()
        opt.set_mask(p, m)
        opt.step()
    # float64 hand computation, entry by entry, each with its own step count
    for i in range(2):
        for j in range(3):
            w, ma, va, t = float(w0[i, j]), 0.0, 0.0, 0
            for g, m in zip(grads, masks):
                if not m[i, j]:
                    continue
                t += 1
                gg = float(g[i, j])
                w *= 1 - lr * wd
                ma = b1 * ma + (1 - b1) * gg
                va = b2 * va + (1 - b2) * gg * gg
                w -= lr / (1 - b1**t) * ma / (math.sqrt(va) / math.sqrt(1 - b2**t) + eps)
            assert opt.state[p]["step_count"][i, j].item() == t
            assert abs(p[i, j].item() - w) <= 1e-6 * max(1.0, abs(w)), (i, j)
            assert abs(opt.state[p]["exp_avg"][i, j].item() - ma) <= 1e-6
            if t == 0:
                assert p[i, j].item() == w0[i, j].item()  # never selected: exactly the start value
    assert opt.state[p]["step_count"][1, 2].item() == 0


def test_state_dict_round_trip_weights_only():
    model_a, model_b = tiny_model(2), tiny_model(2)
    mask_fn = lambda p, s: (torch.arange(p.numel()) % (s + 2) == 0).view(p.shape)  # noqa: E731
    opt_a = MaskedAdamW(model_a.parameters(), lr=LR)
    run(model_a, opt_a, 3, masks=mask_fn)
    buf = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "model": model_a.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model_b.load_state_dict(ck["model"])
    opt_b = MaskedAdamW(model_b.parameters(), lr=LR)
    opt_b.load_state_dict(ck["opt"])
    for p in model_b.parameters():
        assert opt_b.state[p]["step_count"].dtype == torch.int16
    for s in range(3, 6):  # continue both: identical trajectories
        for model, opt in [(model_a, opt_a), (model_b, opt_b)]:
            set_grads(model, s)
            for p in model.parameters():
                opt.set_mask(p, mask_fn(p, s))
            opt.step()
    assert_same(params(model_a), params(model_b))


def test_step_count_saturates_exactly():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = MaskedAdamW([p], lr=0.01)
    p.grad = torch.tensor([0.5, 0.5, -0.5])
    opt.set_mask(p, torch.tensor([0, 2]))
    opt.step()
    st = opt.state[p]
    st["step_count"].fill_(COUNT_MAX)
    m, v, w = st["exp_avg"].clone(), st["exp_avg_sq"].clone(), p.detach().clone()
    opt.step()
    assert st["step_count"][0].item() == COUNT_MAX  # saturated, no int16 wrap-around
    # torch's own dense formula at a much larger step gives the same float32 result
    ref_p, ref_g = w.clone(), p.grad.clone()
    state = {"step": torch.tensor(40000.0), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    from sftune.optim.masked_adamw import _dense_adamw_

    _dense_adamw_(ref_p, ref_g, state, 0.01, 0.9, 0.999, 1e-8, 0.01)
    assert torch.equal(p.detach()[[0, 2]], ref_p[[0, 2]])
    assert p[1].item() == w[1].item()


def test_function_paths_agree_and_chunking():
    g = torch.Generator().manual_seed(3)
    shape = (33, 17)
    base = [torch.randn(shape, generator=g) for _ in range(2)] + [torch.rand(shape, generator=g)]
    grad = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < 0.4
    counts = torch.randint(0, 50, shape, generator=g).to(torch.int16)
    results = []
    for sel, chunk in [(mask, 1 << 18), (mask, 7), (mask.reshape(-1).nonzero().squeeze(1), 1 << 18)]:
        p, m, v = (t.clone() for t in base)
        c = counts.clone()
        masked_adamw_step_(p, grad, m, v, c, sel, 1e-3, 0.9, 0.999, 1e-8, 0.01, chunk_size=chunk)
        results.append((p, m, v, c))
    for r in results[1:]:
        for x, y in zip(results[0], r):
            assert torch.equal(x, y)
    p, m, v, c = results[0]
    assert torch.equal(c[~mask], counts[~mask]) and torch.equal(c[mask], counts[mask] + 1)
    p2, m2, v2 = (t.clone() for t in base)
    masked_adamw_step_(p2, grad, m2, v2, counts.clone(), torch.empty(0, dtype=torch.long), 1e-3, 0.9, 0.999,
                       1e-8, 0.01)
    assert torch.equal(p2, base[0])  # empty selection: nothing changes


def test_validation_and_closure():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError):
        MaskedAdamW([p], betas=(0.9, 0.9999))  # int16 saturation would not be exact
    opt = MaskedAdamW([p])
    with pytest.raises(ValueError):
        opt.set_mask(p, torch.ones(4, dtype=torch.bool))
    with pytest.raises(KeyError):
        opt.set_mask(torch.nn.Parameter(torch.zeros(3)), None)
    with pytest.raises(TypeError):
        opt.set_mask(p, torch.ones(3))

    def closure():
        p.grad = torch.ones(3)
        return torch.tensor(1.5)

    assert opt.step(closure).item() == 1.5
    assert opt.state[p]["step"].item() == 1
    opt.set_mask(p, torch.tensor([1]))
    assert opt.get_mask(p) is not None
    opt.clear_masks()
    assert opt.get_mask(p) is None
