"""bitfit: biases only, plus the head (methods.md section 1)."""

from sftune.methods.base import Method
from sftune.registry import register


@register
class BitFit(Method):
    name = "bitfit"
    summary = ("Every bias (LayerNorm and pooler biases included) plus the whole head trains. Defaults keep "
               "sftune's optimizer settings; the reference's (no weight decay, constant LR): --preset bitfit.")
    details = ("Ben Zaken et al. 2022 (benzakenelad/BitFit). sftune's defaults keep the run's optimizer settings, "
               "which differ from the reference: it applies train.weight_decay to the head's weights (biases never "
               "get weight decay) and warms up over train.warmup_ratio with linear decay, where the reference uses "
               "AdamW (eps 1e-6) with no weight decay on any parameter and a constant LR without warmup (lr 1e-3, "
               "batch 8, 16 epochs). --preset bitfit reproduces the reference.")

    def trainable(self, name, param):
        return name.endswith("bias") or self.ctx.groups[name] == "head"
