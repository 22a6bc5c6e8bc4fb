"""Flat gradients (train.flat_grads): the same training, bit for bit, with the candidates' gradients in one
buffer and the selection applied to it in a few kernels, as with per-parameter gradients."""

import pytest
import torch
from helpers import make_trainer, record_masks, snapshot

# Stochastic samples with exponential keys over the flat buffer instead of inverse-CDF draws: the same
# distribution, other draws (its exactness with flat gradients: test_selectors' update-mode test).
FLAT_METHODS = ["random", "top", "child-tuning-f", "child-tuning-d"]


def _train(tiny_bert, glue_dir, method, mode, flat, **sets):
    trainer = make_trainer(tiny_bert, glue_dir, method, mode, steps=4, train__flat_grads=flat,
                           method__fisher_batches=2, **sets) if method == "child-tuning-d" else \
        make_trainer(tiny_bert, glue_dir, method, mode, steps=4, train__flat_grads=flat, **sets)
    masks = record_masks(trainer)
    used = []
    original = trainer.method.after_backward

    def after_backward(step):
        used.append(trainer.method.flat_grads is not None and trainer.method.flat_grads.holds_grads())
        original(step)

    trainer.method.after_backward = after_backward
    trainer.train()
    return snapshot(trainer), masks, used, trainer


@pytest.mark.parametrize("mode", ["grad", "update"])
@pytest.mark.parametrize("method", FLAT_METHODS)
def test_flat_gradients_train_identically(tiny_bert, glue_dir, method, mode):
    weights_off, masks_off, used_off, _ = _train(tiny_bert, glue_dir, method, mode, "off")
    weights_on, masks_on, used_on, trainer = _train(tiny_bert, glue_dir, method, mode, "on")
    assert not any(used_off)
    assert used_on == [False, True, True, True]  # the first step finds the unused parameters, then flat
    for a, b in zip(masks_off, masks_on):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    for name in weights_off:
        assert torch.equal(weights_off[name], weights_on[name]), name
    flat = trainer.method.flat_grads.buffer
    attached = {id(p) for p, _, _ in trainer.method.flat_grads._attached}
    assert attached and all(id(p) in attached for n, p in trainer.method.candidates.items()
                            if n in flat.views and p.requires_grad and "pooler" not in n)


def test_flat_gradients_with_accumulation_and_a_replaced_gradient(tiny_bert, glue_dir):
    """Micro-batches accumulate into the buffer; a gradient that something replaced sends the step down the
    per-parameter path instead of masking a stale buffer."""
    weights_off, masks_off, _, _ = _train(tiny_bert, glue_dir, "top", "grad", "off", train__grad_accum=2)
    weights_on, masks_on, used_on, _ = _train(tiny_bert, glue_dir, "top", "grad", "on", train__grad_accum=2)
    assert used_on == [False, True, True, True]
    assert all(torch.equal(weights_off[n], weights_on[n]) for n in weights_off)

    trainer = make_trainer(tiny_bert, glue_dir, "random", "grad", steps=3, train__flat_grads="on")
    method = trainer.method
    original = method.after_backward

    def after_backward(step):
        if step == 3:  # replace one gradient by a copy: the buffer no longer holds it
            p = next(iter(method.candidates.values()))
            p.grad = p.grad.clone()
            assert method.flat_grad() is None
        original(step)
        if step == 3:
            kept = {n: int((p.grad != 0).sum()) for n, p in method.candidates.items()}
            assert sum(kept.values()) <= method.k

    method.after_backward = after_backward
    trainer.train()


def test_auto_uses_flat_gradients_only_on_cuda(tiny_bert, glue_dir):
    from sftune.methods.flat_grads import wanted

    assert wanted("auto", torch.device("cuda"), 1) and not wanted("auto", torch.device("cuda"), 2)
    assert not wanted("auto", torch.device("cpu"), 1) and wanted("on", torch.device("cpu"), 4)
    assert make_trainer(tiny_bert, glue_dir, "random", steps=1).method.flat_grads is None
    assert make_trainer(tiny_bert, glue_dir, "dps-dense", steps=1, train__flat_grads="on").method.flat_grads is None
