"""bitfit: biases only, plus the head (methods.md section 1)."""

from sftune.methods.base import Method
from sftune.registry import register


@register
class BitFit(Method):
    name = "bitfit"
    summary = "Every bias (LayerNorm and pooler biases included) plus the whole head trains."
    details = ("Ben Zaken et al. 2022 (benzakenelad/BitFit). sftune keeps the run's optimizer settings (the "
               "authors' scripts use a constant LR: --set train.scheduler=constant_with_warmup). Biases never "
               "get weight decay in sftune.")

    def trainable(self, name, param):
        return name.endswith("bias") or self.ctx.groups[name] == "head"
