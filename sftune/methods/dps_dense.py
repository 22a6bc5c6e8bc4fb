"""dps-dense: DPS with dense Stage I updates (Zhang et al., NeurIPS 2022; methods.md section 3).

    Stage I  (odd stages):  every weight updates; G += g^2 per masked weight (the step's accumulated, unscaled
                            gradient, before clipping)
    Stage II (even stages): at the first step, M = top-ceil((1-p) N) of G per Linear weight matrix, fixed for
                            the stage; G is freed. Gradients (grad mode) or updates (update mode) masked by M.

Memory per masked weight: G in Stage I (2 B bfloat16 by default, 4 B float32), M in Stage II (1 B bool, kept
only while G is gone). Peak 2 B (bfloat16) vs ~12 B in the reference (float32 GAM + int64 mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.methods.dps_common import GAM_DTYPES, DPSMethod, DPSOptions, top_mask
from sftune.registry import register


@register
class DPSDense(DPSMethod):
    name = "dps-dense"
    summary = "DPS Dense: alternate dense stages (accumulating squared gradients) and stages that update only " \
              "the top (1-p) of each Linear weight matrix by that sum."
    details = ("Zhang et al., NeurIPS 2022 (code ZhangHaojie077/DPS, BERT only). Stage length U = int(T*ur) "
               "optimizer steps, stage s = ceil(t/U): odd = Stage I (dense, GAM G += g^2 from the accumulated, "
               "unscaled gradient), even = Stage II (at its first step M = top-ceil((1-p)N) of G per Linear weight "
               "matrix, fixed for the stage); GAM reset every cycle. Masked: the weights of every nn.Linear "
               "(Q, K, V, attention-out, FFN, pooler and, as methods.md lists, the head; method.head=false trains the "
               "head densely); biases, LayerNorm and embeddings always update. Reference quirk kept in grad mode: "
               "g <- g*M before clipping, so AdamW momentum and weight decay still move unselected entries (update "
               "mode freezes them exactly). sftune choices: U is at least 1 (tiny runs); exact budget with ties to "
               "the lower index; GAM in bfloat16 by default (method.gam_dtype=float32 for the reference's float32; "
               "measured top-set agreement in docs/methods.md) and freed once the mask is computed; bool mask, "
               "bit-packed in checkpoints; state keyed by parameter name. Update mode also masks the gradient "
               "before clipping (sftune choice: the same clipping norm as grad mode). Reference script (--preset dps "
               "reproduces it): p 0.3, ur 0.05, lr 2e-5, bs 16, 3 epochs, warmup 10%, wd 0.01, float32 GAM, "
               "dropout 0 but 0.1 when the script's steps are >= 2000, and in low-resource runs U from one epoch's "
               "steps (method."
               "dropout_rule, method.stage_steps); sftune's defaults keep the model's dropout, U = int(T*ur) and "
               "a bfloat16 GAM.")

    @dataclass
    class Options(DPSOptions):
        pass

    def reference_dropout(self, script_steps: int) -> float:
        return 0.1 if script_steps >= 2000 else 0.0  # run_trainer.py:362-364: long runs keep BERT's 0.1

    def _start_stage_one(self, stage: int) -> None:
        self.stage_masks = {}
        self._new_gam()  # every odd stage starts a cycle: fresh GAM

    def _accumulate(self, step: int) -> None:
        self._gam_add_(step)

    def _start_stage_two(self, stage: int) -> None:
        # G is reset at the next cycle anyway: free each matrix's G as soon as its mask exists, so G and M
        # never coexist beyond one matrix.
        masks = {}
        for n in list(self.gam):
            masks[n] = top_mask(self.gam.pop(n), self.p)
        self.stage_masks = masks

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int]:
        # Stage I holds the GAM, Stage II bool masks (the GAM is freed matrix by matrix): the larger of the two.
        n = self.masked_numel()
        gam = n * torch.empty(0, dtype=GAM_DTYPES[self.options.gam_dtype]).element_size()
        return {"gam": gam} if gam >= n else {"mask": n}
