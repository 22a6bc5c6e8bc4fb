"""Where each method masks relative to clipping, and what it masks (methods.md section 0), computed by hand with
plain torch on a tiny BERT: Child-Tuning clips the full gradient and then masks (F: every parameter, the
classifier too, rescaled by 1/p), as ChildTuningOptimizer.py:55-64 does inside optimizer.step(); DPS and
Top mask first and clip the masked gradient. Both mask modes keep the same order."""

import copy

import pytest
import torch
from helpers import make_trainer, record_masks

CLIP = 1e-3  # below the tiny model's gradient norms, so clipping acts on every step
P = {"child-tuning-f": 0.3, "child-tuning-d": 0.2}


def _make(tiny_bert, glue_dir, method, mode, steps):
    sets = {"model__dropout": 0.0, "train__max_grad_norm": CLIP, "train__weight_decay": 0.0}
    if method in P:
        sets["method__p"] = P[method]
    if method == "child-tuning-d":
        sets["method__fisher_batches"] = 2
    if method == "dps-dense":
        sets["method__ur"] = 0.25  # U = 1: step 2 is a Stage II step
    if method == "top":
        sets["method__k"] = 500
    trainer = make_trainer(tiny_bert, glue_dir, method, mode, steps=steps, **sets)
    trainer._evaluate_and_record = lambda final=False: {}  # no evaluation: only the training steps matter here
    return trainer


def _record_batches(trainer) -> list[dict]:
    batches = []

    def keep(module, args, kwargs):
        batches.append({k: v.clone() for k, v in kwargs.items()})

    trainer.model.register_forward_pre_hook(keep, with_kwargs=True)
    return batches


def _full_grads(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def _clip(params, max_norm) -> float:
    """Plain clipping by the total L2 norm, written out."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    for g in grads:
        g.mul_(scale)
    return float(norm)


def _mask(model, masks, scale=None) -> None:
    for name, p in model.named_parameters():
        if name in masks and p.grad is not None:
            p.grad.mul_(masks[name])
            if scale is not None:
                p.grad.mul_(scale)


@pytest.mark.parametrize("mode", ["grad", "update"])
@pytest.mark.parametrize("method", ["child-tuning-f", "child-tuning-d", "top", "dps-dense"])
def test_gradient_at_the_optimizer_step_follows_the_references_order(tiny_bert, glue_dir, method, mode):
    """Step 2's gradient as the optimizer receives it, against the same step done by hand in the method's
    reference order; and the other order gives a clearly different gradient, so the test can tell."""
    trainer = _make(tiny_bert, glue_dir, method, mode, steps=2)
    masks = record_masks(trainer)
    batches = _record_batches(trainer)
    start, got = {}, {}
    original_forward_hook = trainer.method.before_forward

    def before_forward(step):
        original_forward_hook(step)
        if step == 2:
            start.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})

    trainer.method.before_forward = before_forward
    original_step = trainer.optimizer.step

    def step(*args, **kwargs):
        if start and not got:
            got.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return original_step(*args, **kwargs)

    trainer.optimizer.step = step
    trainer.train()

    model = copy.deepcopy(trainer.model)
    model.load_state_dict(start)
    model.train()
    mask = masks[1]
    if method == "child-tuning-f":
        assert "classifier.weight" in mask and "bert.embeddings.word_embeddings.weight" in mask
    if method == "dps-dense":
        assert mask  # a Stage II step

    def by_hand(clip_first: bool) -> dict[str, torch.Tensor]:
        _full_grads(model, batches[1])
        scale = 1.0 / P[method] if method == "child-tuning-f" else None
        params = [p for p in model.parameters() if p.grad is not None]
        if clip_first:
            assert _clip(params, CLIP) > CLIP
            _mask(model, mask, scale)
        else:
            _mask(model, mask, scale)
            assert _clip(params, CLIP) > CLIP
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference_clips_first = method.startswith("child-tuning")
    want = by_hand(reference_clips_first)
    other = by_hand(not reference_clips_first)
    assert want.keys() == got.keys()
    scale = max(float(g.abs().max()) for g in got.values())  # ~CLIP: gradient entries after clipping
    worst = max(float((want[n] - got[n]).abs().max()) for n in want) / scale
    apart = max(float((other[n] - got[n]).abs().max()) for n in want) / scale
    assert worst < 1e-5, (worst, apart)
    # Child-Tuning D masks only the encoder layers, so its two orders differ least (~1e-4 of the scale here).
    assert apart > 10 * max(worst, 1e-7), (worst, apart)


def test_child_tuning_f_three_steps_by_hand(tiny_bert, glue_dir):
    """Three grad-mode steps of Child-Tuning F by hand: AdamW on g = clip(g_full) * M / p for every parameter;
    the weights match, and masking before clipping (sftune's order before this fix) ends elsewhere."""
    trainer = _make(tiny_bert, glue_dir, "child-tuning-f", "grad", steps=3)
    masks = record_masks(trainer)
    batches = _record_batches(trainer)
    initial = copy.deepcopy(trainer.model)
    trainer.train()

    def by_hand(clip_first: bool) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(initial)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.0, fused=True)
        for batch, mask in zip(batches, masks):
            _full_grads(model, batch)
            params = list(model.parameters())
            if clip_first:
                torch.nn.utils.clip_grad_norm_(params, CLIP)
            _mask(model, mask, 1.0 / 0.3)
            if not clip_first:
                torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {n: p.detach() for n, p in model.named_parameters()}

    assert len(masks) == 3 and all("classifier.weight" in m for m in masks)
    want, old_order = by_hand(True), by_hand(False)
    got = {n: p.detach() for n, p in trainer.model.named_parameters()}
    start = {n: p.detach() for n, p in initial.named_parameters()}
    def rel(a):  # distance from `want` relative to the whole update (attention key biases get no gradient)
        return float(torch.sqrt(sum(((a[n] - want[n]) ** 2).sum() for n in want))
                     / torch.sqrt(sum(((want[n] - start[n]) ** 2).sum() for n in want)))

    assert max(float((got[n] - want[n]).abs().max()) for n in want) < 1e-6
    assert rel(got) < 1e-5
    assert rel(old_order) > 0.01  # the two orders differ by per cents of the update


def test_child_tuning_d_fisher_scores_the_reinitialised_model(tiny_bert, glue_dir):
    """--reg reinit changes the top layer before training; the Fisher pass must score that model: by hand,
    per-tensor clipped squared gradients over the same batches on the trainer's (re-initialised) weights,
    one global NumPy percentile. The pre-reinit model's Fisher gives another mask (so the test can tell)."""
    import numpy as np

    def fisher_mask(model, loader, names):
        fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
        params = dict(model.named_parameters())
        for i, batch in enumerate(loader):
            if i == 3:
                break
            _full_grads(model, {k: v for k, v in batch.items() if k != "idx"})
            for n in fisher:
                g = params[n].grad
                g = g * min(1.0, 0.5 / (float(g.norm()) + 1e-6))
                fisher[n] += g * g / 3
        model.zero_grad(set_to_none=True)
        tau = np.percentile(np.concatenate([f.reshape(-1).numpy() for f in fisher.values()]), 80)
        return {n: f.numpy() >= tau for n, f in fisher.items()}

    common = dict(method__p=0.2, method__fisher_batches=3, model__dropout=0.0, train__max_grad_norm=0.5)
    trainer = make_trainer(tiny_bert, glue_dir, "child-tuning-d", steps=1, regs=[{"name": "reinit", "L": 1}],
                           **common)
    plain = make_trainer(tiny_bert, glue_dir, "child-tuning-d", steps=1, **common)
    method = trainer.method
    names = set(method.candidates)
    reinitialised = [n for n in names if f"layer.{len(trainer.method.ctx.model.bert.encoder.layer) - 1}." in n]
    assert reinitialised and any(not torch.equal(dict(trainer.model.named_parameters())[n],
                                                 dict(plain.model.named_parameters())[n]) for n in reinitialised)
    model = copy.deepcopy(trainer.model)
    want = fisher_mask(model, method.ctx.train_loader, names)
    before = fisher_mask(copy.deepcopy(plain.model), plain.method.ctx.train_loader, names)
    got = {n: v.numpy() for n, v in method.mask.views.items()}
    wrong = sum(int((want[n] != got[n]).sum()) for n in want)
    differs = sum(int((before[n] != got[n]).sum()) for n in want)
    total = sum(v.size for v in want.values())
    assert wrong <= max(2, total // 10_000), (wrong, total)  # float summation-order ties only
    assert differs > 100 * max(wrong, 1), (differs, wrong)
