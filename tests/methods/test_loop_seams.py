"""The loop's seams: a masked method owns its update-mode optimizer, and clipping reuses the divergence guard's
gradient norm only where no plug-in can change the gradients in between (with the same result)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_trainer

from sftune.methods.base import Method, changes_gradients, torch_optimizer
from sftune.optim import MaskedAdamW


@pytest.mark.parametrize(("method", "mode", "expected"), [
    ("random", "update", MaskedAdamW), ("random", "grad", torch.optim.AdamW),
    ("full", "update", torch.optim.AdamW),  # nothing to mask: the standard optimizer in both modes
])
def test_the_optimizer_is_the_one_the_method_asks_for(tiny_bert, glue_dir, method, mode, expected):
    trainer = make_trainer(tiny_bert, glue_dir, method, mode, steps=1)
    assert type(torch_optimizer(trainer.optimizer)) is expected


def test_update_mode_refuses_an_optimizer_it_did_not_build(tiny_bert, glue_dir):
    trainer = make_trainer(tiny_bert, glue_dir, "random", "update", steps=1)
    with pytest.raises(RuntimeError, match="MaskedAdamW of own_optimizer"):
        trainer.method.on_optimizer(torch.optim.AdamW(trainer.model.parameters()))
    assert Method().own_optimizer([], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=False) is None


def test_only_plugins_that_override_after_backward_change_gradients(tiny_bert, glue_dir):
    assert make_trainer(tiny_bert, glue_dir, "full", steps=1).clip_reuses_guard_norm
    masked = make_trainer(tiny_bert, glue_dir, "random", steps=1)
    assert changes_gradients(masked.method) and not masked.clip_reuses_guard_norm
    with_reg = make_trainer(tiny_bert, glue_dir, "full", steps=1, regs=[{"name": "mixout", "p": 0.1}])
    assert not any(map(changes_gradients, with_reg.plugins)) and with_reg.clip_reuses_guard_norm


def _trained(tiny_bert, glue_dir, max_grad_norm: float, reuse: bool) -> dict[str, torch.Tensor]:
    trainer = make_trainer(tiny_bert, glue_dir, "full", steps=3, train__max_grad_norm=max_grad_norm)
    trainer.clip_reuses_guard_norm = reuse
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_clipping_with_the_guards_norm_gives_the_same_weights(tiny_bert, glue_dir):
    shared = _trained(tiny_bert, glue_dir, 0.05, reuse=True)
    own = _trained(tiny_bert, glue_dir, 0.05, reuse=False)
    unclipped = _trained(tiny_bert, glue_dir, 0.0, reuse=False)
    assert all(torch.equal(shared[n], own[n]) for n in shared)
    assert not all(torch.equal(shared[n], unclipped[n]) for n in shared)  # the clip was active
