"""reinit: re-initialise the top L transformer layers (and the pooler) before training (methods.md section 5;
Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning").

The layers are found generically (`layer_stack`): BERT/RoBERTa/ELECTRA/DeBERTa-v2 `encoder.layer`, BART
`encoder.layers` followed by `decoder.layers` (BART classifies from the decoder's last state, so the decoder's
top layers are the top of the stack). Every submodule of the chosen layers goes through the model's own
`_init_weights` (transformers' per-family initialiser: normal(0, initializer_range) Linear weights, zero
biases, LayerNorm 1/0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sftune.errors import UsageError
from sftune.methods.base import Regularizer, RunContext
from sftune.models import layer_stack, pooler_modules
from sftune.options import option
from sftune.registry import register_regularizer


def reinit_modules(model: nn.Module, modules: list[nn.Module]) -> None:
    """Run the model's own initialiser on every submodule of `modules`.

    transformers 5 skips tensors flagged `_is_hf_initialized` (set on everything loaded from a checkpoint), so
    the flags are cleared first and set again afterwards; transformers 4 has no flags and needs nothing.
    """
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise UsageError(f"{type(model).__name__} has no _init_weights (not a transformers model); "
                         "reinit needs the model's own initialiser.")
    with torch.no_grad():
        for top in modules:
            for sub in top.modules():
                tensors = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
                for t in tensors:
                    if getattr(t, "_is_hf_initialized", False):
                        t._is_hf_initialized = False
                if hasattr(sub, "_is_hf_initialized"):
                    sub._is_hf_initialized = False
                init(sub)
                for t in tensors:
                    t._is_hf_initialized = True
                sub._is_hf_initialized = True


@register_regularizer
class Reinit(Regularizer):
    name = "reinit"
    summary = "Re-initialise the top L transformer layers (and the pooler) with the model's own initialiser."
    details = ("Zhang et al. 2021 (Revisiting few-sample BERT fine-tuning); DPS appendix D grid L in 1..7. Runs in "
               "setup (after seeding and loading, before the optimizer) with transformers' _init_weights on every "
               "submodule. The draws come from a generator seeded from the run seed (torch's global RNG is "
               "forked, so dropout and the rest of the run see the same random stream as without reinit). BART: "
               "the stack is the encoder layers then the decoder layers, so L counts down from the decoder's top. "
               "Cannot be combined with the frozen method (the re-initialised layers would never train).")
    incompatible = ("frozen",)

    @dataclass
    class Options:
        L: int = option(1, "Number of top layers to re-initialise (grid 1..7).", ge=0)
        pooler: bool = option(True, "Also re-initialise the pooler (a module named 'pooler'), when the model has one.")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        model, L = ctx.model, int(self.options.L)
        stack = layer_stack(model)
        if not 0 <= L <= len(stack):
            raise UsageError(f"reinit L={L}, but {type(model).__name__} has {len(stack)} layers; "
                             f"choose L between 0 and {len(stack)}.")
        chosen = stack[len(stack) - L:] if L else []
        if self.options.pooler:
            chosen += pooler_modules(model)
        self.reinitialised = [n for n, _ in chosen]
        seed = ctx.generator("reinit").initial_seed()
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            reinit_modules(model, [m for _, m in chosen])

    def summary_stats(self) -> dict:
        return {"reinit": {"L": int(self.options.L), "modules": list(getattr(self, "reinitialised", []))}}
