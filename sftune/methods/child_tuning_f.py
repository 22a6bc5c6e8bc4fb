"""child-tuning-f: task-free Child-Tuning (methods.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.methods.masking import FlatMask, MaskedMethod
from sftune.options import option
from sftune.registry import register
from sftune.select import FlatBuffer, bernoulli_dropout_


@dataclass
class ChildTuningFOptions:
    p: float = option(0.3, "reserve_p: the share of entries KEPT each step (paper grid 0.2, 0.3, 0.4).",
                      gt=0, le=1)


@register
class ChildTuningF(MaskedMethod):
    name = "child-tuning-f"
    summary = ("Child-Tuning F: every step each gradient entry (head included) is kept with probability p and "
               "rescaled by 1/p, after clipping. Defaults warm up; the reference does not: --preset child-tuning.")
    details = ("Xu et al. 2021 (PKUnlp-icler/ChildTuning). Every step, for every parameter the optimizer holds "
               "(the classifier, embeddings, biases and LayerNorms too, as the reference's ChildTuningAdamW does), "
               "M ~ Bernoulli(p) element-wise and g <- g * M * (1/p) (the reference multiplies by M / p, i.e. by the "
               "float 1/p, too). As in the reference (ChildTuningOptimizer.py:55-64) the mask acts after clipping: "
               "the clip sees the full, unmasked gradient. Update mode (sftune choice): the same order and the "
               "same rescaled gradient, and only the kept entries are updated. The reference trainer passes "
               "warmup_steps (default 0) to its scheduler, so its runs have no warmup: --preset child-tuning "
               "reproduces that, sftune's default keeps train.warmup_ratio 0.1. "
               "Bernoulli draws use 16-bit random words (probability resolution 2^-16).")
    Options = ChildTuningFOptions

    flat_capable = True  # select() returns a FlatMask, already applied
    mask_after_clip = True  # the reference masks inside optimizer.step(), after the trainer clipped

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.generator = ctx.generator(self.name)
        # One bool mask over all candidates (1 B/entry), redrawn in place every step.
        device = next(iter(self.candidates.values())).device
        self.mask = FlatBuffer({n: p.shape for n, p in self.candidates.items()}, torch.bool, device, fill=None)

    def candidate(self, name, param) -> bool:
        return True  # every parameter, head included (frozen ones get no gradient and are skipped)

    def select(self, step):
        # The mask is drawn over the candidates laid end to end and applied while each chunk is in cache, to
        # the flat gradient buffer or to the parameters' own gradients: the same draws either way.
        flat = self.flat_grad()
        if flat is not None:
            targets = [(0, flat)]
        else:
            targets = [(self.mask.offsets[n], p.grad.view(-1)) for n, p in self.candidates.items()
                       if p.grad is not None]
        bernoulli_dropout_(self.mask.data, self.options.p, self.generator, targets, scale=1.0 / self.options.p)
        return FlatMask(self.mask, applied=True)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int]:
        return {"buffers": self.masked_numel()}  # a bool Bernoulli mask per candidate entry
