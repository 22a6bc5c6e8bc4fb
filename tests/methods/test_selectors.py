"""Parity and exactness of the per-step selectors and Child-Tuning (methods.md sections 1, 2, 4)."""

import numpy as np
import pytest
import torch
from helpers import make_trainer, record_masks, snapshot

from sftune.methods.importance import squared_importance_


def changed_sets(before, trainer):
    return {n: p.detach() != before[n] for n, p in trainer.model.named_parameters()}


def record_optimizer_steps(monkeypatch) -> list[dict]:
    """Every MaskedAdamW step, as {parameter name: (before, after, its group, its state after the step)}."""
    from sftune.optim import MaskedAdamW

    steps, optimizer_step = [], MaskedAdamW.step

    def recording_step(self, closure=None):
        params = [(n, p, g) for g in self.param_groups for n, p in zip(g["names"], g["params"])]
        before = {n: p.detach().clone() for n, p, _ in params}
        out = optimizer_step(self, closure)
        steps.append({n: (before[n], p.detach().clone(), g, {key: value.clone() for key, value in
                                                             self.state[p].items()}) for n, p, g in params})
        return out

    monkeypatch.setattr(MaskedAdamW, "step", recording_step)
    return steps


def adamw_update_by_hand(w, state, group):
    """The AdamW step (decoupled weight decay included) that produced `state`, per entry, in float64, from the
    moments and step counts the step left (torch.optim.AdamW's formula; per-entry counts once masked)."""
    b1, b2 = group["betas"]
    t = state["step_count"].double() if "step_count" in state else state["step"].double()
    m, v = state["exp_avg"].double(), state["exp_avg_sq"].double()
    adam = group["lr"] / (1 - b1 ** t) * m / (v.sqrt() / (1 - b2 ** t).sqrt() + group["eps"])
    return -(w.double() * group["lr"] * group["weight_decay"] + adam)


def stuck_entries_round_away(name, before, after, selected, group, state) -> int:
    """Selected entries that kept their value in a step: each one's update, computed by hand from the state the
    step left, must be below one float32 ulp of the weight (it rounds away). Returns how many there were."""
    stuck = selected & (after == before)
    if stuck.any():
        update = adamw_update_by_hand(before, state, group)[stuck]
        ulp = torch.from_numpy(np.spacing(before[stuck].abs().numpy())).double()
        assert (update.abs() <= ulp).all(), (name, update, before[stuck])
    return int(stuck.sum())


@pytest.mark.parametrize("method,flat",
                         [("stochastic", "off"), ("stochastic", "on"), ("top", "off"), ("random", "off")])
def test_update_mode_changes_exactly_the_union_of_selections(tiny_bert, glue_dir, monkeypatch, method, flat):
    """Every step moves only its selected entries, and every selected entry moves unless its AdamW update rounds
    away (below one float32 ulp of the weight, checked by hand: see the next test; a uniformly drawn entry with
    a zero weight and a zero gradient has an update of exactly 0)."""
    steps = record_optimizer_steps(monkeypatch)
    # flat=on: stochastic's other sampler (exponential keys over the flat buffer) from the second step on
    trainer = make_trainer(tiny_bert, glue_dir, method, "update", steps=3, method__k=200, train__flat_grads=flat)
    masks = record_masks(trainer)
    before = snapshot(trainer)
    trainer.train()
    changed = changed_sets(before, trainer)
    assert len(masks) == len(steps) == 3
    stuck = 0
    for selection, params in zip(masks, steps):
        assert sum(int(m.sum()) for m in selection.values()) == 200  # exact budget every step
        for name in trainer.method.candidates:
            was, now, group, state = params[name]
            selected = selection.get(name, torch.zeros_like(was, dtype=torch.bool))
            assert not ((now != was) & ~selected).any(), name  # nothing outside this step's selection moved
            stuck += stuck_entries_round_away(name, was, now, selected, group, state)
    for name in trainer.method.candidates:  # over the run: nothing outside the union of the selections moved
        union = torch.zeros_like(changed[name])
        for selection in masks:
            union |= selection.get(name, torch.zeros_like(union))
        assert not (changed[name] & ~union).any(), name
    assert stuck <= 0.01 * 3 * 200  # rare (0 in the runs seen), not updates that go missing
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert frozen and all(not changed[n].any() for n in frozen)  # embeddings are not candidates


def test_stochastic_selects_exactly_k_and_changes_only_selected_entries(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """Update mode's promise: exactly k entries selected every step (plus the dense head), and only selected
    entries change. A selected entry may still keep its value: when its AdamW update is below half a float32 ulp
    of the weight (seen: a LayerNorm weight at 0.999 whose new gradient nearly cancels its momentum, update
    ~1e-8), so `changed` can be below `selected` (once 215 of 216). Every such entry is checked by hand."""
    from sftune.artifacts import RunDir, read_jsonl
    from sftune.engine.loop import Reporter
    from sftune.methods.stochastic import StochasticTuning
    from sftune.run import train_run

    k, selections = 1000, []  # seed 13: one such entry (single thread; the checks hold for any trajectory)
    select = StochasticTuning.select

    def recording_select(self, step):
        selection = select(self, step)
        selections.append(self.masks_of(selection))
        return selection

    monkeypatch.setattr(StochasticTuning, "select", recording_select)
    steps = record_optimizer_steps(monkeypatch)
    trainer = make_trainer(tiny_bert, glue_dir, "stochastic", "update", steps=3, method__k=k, train__seed=13)
    run = RunDir(tmp_path / "r")
    train_run(trainer.cfg, run, Reporter())
    records = [r for r in read_jsonl(run.metrics) if r["type"] == "train"]
    total = sum(p.numel() for p in trainer.model.parameters())
    head = sum(p.numel() for n, p in trainer.model.named_parameters() if n.startswith("classifier."))
    assert len(records) == len(selections) == len(steps) == 3
    stuck_seen = 0
    for record, selected, params in zip(records, selections, steps):
        assert sum(int(m.numel()) for m in selected.values()) == k  # index masks: distinct entries
        assert round(record["selected"] * total) == k + head
        changed = stuck_here = 0
        for name, (before, after, group, state) in params.items():
            mask = torch.ones_like(before, dtype=torch.bool)  # not a candidate: the head, which trains densely
            if name in selected:  # every candidate has an entry, possibly empty
                mask = torch.zeros(before.numel(), dtype=torch.bool)
                mask[selected[name]] = True
                mask = mask.view(before.shape)
            else:
                assert name.startswith("classifier."), name
            moved = after != before
            assert not (moved & ~mask).any(), name  # only selected entries change
            stuck_here += stuck_entries_round_away(name, before, after, mask, group, state)
            changed += int(moved.sum())
        assert round(record["changed"] * total) == changed == k + head - stuck_here  # the meter counts alike
        stuck_seen += stuck_here
    assert stuck_seen <= 0.01 * len(steps) * (k + head)  # rare near-cancellations, not updates that go missing


def test_grad_mode_lets_adamw_move_unselected_entries(tiny_bert, glue_dir):
    trainer = make_trainer(tiny_bert, glue_dir, "top", "grad", steps=3, method__k=100)
    masks = record_masks(trainer)
    before = snapshot(trainer)
    trainer.train()
    changed = changed_sets(before, trainer)
    moved_outside = sum(int((changed[n] & ~masks[-1].get(n, torch.zeros_like(changed[n]))).sum())
                        for n in trainer.method.candidates)
    assert moved_outside > 0  # momentum and weight decay: the drift the reference mode hides


def test_importance_by_hand():
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    g = torch.tensor([[0.5, 0.5], [-1.0, 2.0]])
    mu = torch.tensor([2.0, 0.1])
    out = torch.empty(2, 2)
    squared_importance_(out, "linear_weight", w, g, mu)
    expected = (mu.unsqueeze(0) * w * g) ** 2  # mu over input columns, broadcast over rows
    assert torch.allclose(out, expected)
    b, gb = torch.tensor([1.0, -3.0]), torch.tensor([2.0, 1.0])
    assert torch.allclose(squared_importance_(torch.empty(2), "bias", b, gb, None), (b * gb) ** 2)


def test_top_picks_the_exact_top_k_of_the_importance(tiny_bert, glue_dir):
    trainer = make_trainer(tiny_bert, glue_dir, "top", "grad", steps=1, method__k=50)
    method = trainer.method
    captured = {}
    original = method.scores

    def scores():
        s = original()
        captured["s"] = s.clone()
        return s

    method.scores = scores
    masks = record_masks(trainer)
    trainer.train()
    chosen = torch.cat([masks[0][n].reshape(-1) for n in method.candidates])
    top = torch.topk(captured["s"], 50).values
    assert torch.equal(torch.sort(captured["s"][chosen]).values, torch.sort(top).values)


def test_mu_averages_non_padding_tokens():
    from torch import nn

    from sftune.methods.importance import InputMeans

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x, attention_mask=None):
            return self.lin(x)

    model = Tiny()
    means = InputMeans(model, {"lin"})
    x = torch.tensor([[[1.0, -2.0], [100.0, 100.0]], [[3.0, 4.0], [-5.0, 6.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])  # the 100s are padding
    model(x, attention_mask=mask)
    assert torch.allclose(means.pop("lin"), torch.tensor([(1 + 3 + 5) / 3, (2 + 4 + 6) / 3]))


def test_mu_shared_input_is_computed_once_and_never_reused_across_passes():
    """q, k and v read the same tensor (one mean, reused); o reads another; in-place changes and a second
    forward (gradient accumulation) are not mistaken for the same input."""
    from torch import nn

    from sftune.methods.importance import InputMeans

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(3, 3) for _ in range(4))

        def forward(self, x, attention_mask=None):
            y = self.q(x) + self.k(x)
            x2 = x.clone()
            self.v(x2)
            x2.mul_(2.0)  # same tensor object, changed in place: a new mean
            return y + self.o(x2)

    model = Block()
    means = InputMeans(model, {"q", "k", "v", "o"})
    calls = []
    original = torch.Tensor.abs

    def counting_abs(t):
        calls.append(tuple(t.shape))
        return original(t)

    a = torch.randn(2, 4, 3)
    b = torch.randn(2, 4, 3)
    mask = torch.ones(2, 4, dtype=torch.long)
    torch.Tensor.abs = counting_abs
    try:
        model(a, attention_mask=mask)
    finally:
        torch.Tensor.abs = original
    assert len(calls) == 3  # q/k share one computation; v and o (after the in-place change) get their own
    model(b, attention_mask=mask)  # a second micro-batch of the same step
    mean = lambda t: t.abs().reshape(-1, 3).mean(0)  # noqa: E731
    for name in ("q", "k", "v"):
        assert torch.allclose(means.pop(name), (mean(a) + mean(b)) / 2)
    assert torch.allclose(means.pop("o"), (mean(2 * a) + mean(2 * b)) / 2)


def test_random_is_uniform_over_candidates(tiny_bert, glue_dir):
    trainer = make_trainer(tiny_bert, glue_dir, "random", "grad", steps=1, method__k=20)
    method = trainer.method
    counts = {n: 0 for n in method.candidates}
    for step in range(300):
        for name, idx in method.masks_of(method.select(step + 1)).items():
            counts[name] += idx.numel()
    sizes = {n: p.numel() for n, p in method.candidates.items()}
    n = sum(sizes.values())
    big = max(sizes, key=sizes.get)
    expected = 300 * 20 * sizes[big] / n
    assert abs(counts[big] - expected) < 5 * expected ** 0.5


def test_same_seed_same_masks_and_resumable_generator(tiny_bert, glue_dir):
    a = make_trainer(tiny_bert, glue_dir, "random", steps=1, method__k=30)
    b = make_trainer(tiny_bert, glue_dir, "random", steps=1, method__k=30)
    first, other = a.method.masks_of(a.method.select(1)), b.method.masks_of(b.method.select(1))
    assert all(torch.equal(first[n], other[n]) for n in first)
    state = a.method.state_dict()
    nxt = a.method.masks_of(a.method.select(2))
    c = make_trainer(tiny_bert, glue_dir, "random", steps=1, method__k=30)
    c.method.load_state_dict(state)
    resumed = c.method.masks_of(c.method.select(2))
    assert all(torch.equal(nxt[n], resumed[n]) for n in nxt)
    assert not all(torch.equal(nxt[n], first[n]) for n in nxt)


def test_child_tuning_f_keeps_share_p_and_rescales(tiny_bert, glue_dir):
    trainer = make_trainer(tiny_bert, glue_dir, "child-tuning-f", steps=1, method__p=0.3)
    method = trainer.method
    grads = {}
    for name, p in method.candidates.items():
        p.grad = torch.randn_like(p)
        grads[name] = p.grad.clone()
    method.after_backward(1)  # the reference masks after clipping: nothing yet
    assert all(torch.equal(p.grad, grads[n]) for n, p in method.candidates.items())
    method.after_clip(1)
    kept = total = 0
    for name, p in method.candidates.items():
        mask = method.masks[name]
        assert torch.allclose(p.grad, grads[name] * mask / 0.3)
        kept += int(mask.sum())
        total += mask.numel()
    assert abs(kept / total - 0.3) < 0.02
    # Every parameter the optimizer holds is masked, the classifier too (ChildTuningOptimizer.py).
    assert set(method.candidates) == {n for n, _ in trainer.model.named_parameters()}


def test_child_tuning_d_fisher_mask_by_hand(tiny_bert, glue_dir):
    """Per-tensor clipping, F += g^2 / n over the batches, one global numpy-percentile threshold, fixed mask."""
    trainer = make_trainer(tiny_bert, glue_dir, "child-tuning-d", steps=2, method__p=0.2,
                           method__fisher_batches=3, model__dropout=0.0, train__max_grad_norm=0.5)
    method = trainer.method
    masks = record_masks(trainer)
    model = trainer.model
    fisher = {n: torch.zeros_like(p) for n, p in method.candidates.items()}
    batches = 0
    for batch in method.ctx.train_loader:
        if batches == 3:
            break
        batch = {k: v for k, v in batch.items() if k != "idx"}
        model.zero_grad()
        model(**batch).loss.backward()
        for n, p in method.candidates.items():
            g = p.grad
            norm = g.norm()
            g = g * min(1.0, 0.5 / (float(norm) + 1e-6))
            fisher[n] += g * g / 3
        batches += 1
    model.zero_grad()
    trainer.train()
    allf = np.concatenate([f.reshape(-1).numpy() for f in fisher.values()])
    tau = np.percentile(allf, 80)
    for name, f in fisher.items():
        expected = f.numpy() >= tau
        got = masks[0][name].numpy()
        assert (expected != got).sum() <= max(2, int(1e-4 * f.numel())), name  # float summation-order ties only
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])  # fixed for the run
    assert all("layer" in n for n in method.candidates)
    share = sum(int(m.sum()) for m in masks[0].values()) / sum(m.numel() for m in masks[0].values())
    assert abs(share - 0.2) < 0.01


@pytest.mark.parametrize("method,expect", [("attention", ("attention",)), ("layernorm", ("LayerNorm",))])
def test_structural_subsets(tiny_bert, glue_dir, method, expect):
    trainer = make_trainer(tiny_bert, glue_dir, method, steps=1)
    for name, p in trainer.model.named_parameters():
        wanted = name.startswith("classifier.") or (any(e in name for e in expect)
                                                    and not (method == "attention" and "LayerNorm" in name))
        assert p.requires_grad == wanted, name


def test_block_importance_equals_the_flat_scores_and_samples_alike(tiny_bert, glue_dir):
    """Stochastic's block-wise importance (no n-sized buffer) holds bitwise the values Top's flat buffer
    holds, with each parameter padded to whole blocks, and the sampler draws the same sample from it as from
    those values as one tensor (same generator state)."""
    from sftune.methods.importance import ImportanceWeights, PaddedLayout
    from sftune.methods.scored import ScoredMethod
    from sftune.select import weighted_sample_without_replacement
    from sftune.select.blocks import _BLOCK

    trainer = make_trainer(tiny_bert, glue_dir, "top", steps=1)
    method = trainer.method
    batch = next(iter(trainer.train_loader))
    batch.pop("idx", None)
    trainer.model(**batch).loss.backward()
    kept = {n: (method.means.sums[n].clone(), method.means.counts[n].clone()) for n in method.means.sums}
    flat = ScoredMethod.scores(method).clone()
    method.means.sums, method.means.counts = ({n: v[0] for n, v in kept.items()}, {n: v[1] for n, v in kept.items()})
    layout = PaddedLayout([p.numel() for p in method.candidates.values()], _BLOCK, "cpu")  # stochastic's layout
    weights = ImportanceWeights(method.candidates, method.kinds, method._means(), layout)
    assert any(p.numel() % weights.block for p in method.candidates.values())  # padding is exercised
    dense = weights.dense()
    pad = weights.padding()
    assert torch.equal(dense[~pad], flat) and bool((dense[pad] == 0).all())
    from sftune.select.blocks import _level_sums

    assert torch.equal(weights.level_sums(weights.block), _level_sums(dense, weights.block))
    positive = int((flat > 0).sum())
    assert weights.count_positive(at_least=positive + 1) == positive  # counted exactly when it matters
    assert weights.count_positive(at_least=10) >= 10
    rows = torch.arange(weights.numel // weights.block)  # every block: whole-row and padded parameters
    assert torch.equal(weights.rows(rows, weights.block), dense.view(-1, weights.block))
    idx = torch.tensor([1, 40, weights.numel - 1])
    assert torch.equal(weights.values(idx), dense[idx])
    k = 50
    a = weighted_sample_without_replacement(weights, k, torch.Generator().manual_seed(7))
    b = weighted_sample_without_replacement(dense, k, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    packed = weights.unpad(a)  # to the candidates end to end without padding (the flat gradient layout)
    assert torch.equal(dense[a], flat[packed]) and bool((packed[1:] > packed[:-1]).all())
    split = method.split(packed)
    assert sum(v.numel() for v in split.values()) == k
    for name, local in split.items():  # back to the parameters' own flat indices, inside each parameter
        assert bool((local < method.candidates[name].numel()).all())
        start = weights.starts[weights.names.index(name)]
        assert torch.equal(dense[local + start], method.views[name].reshape(-1)[local])
