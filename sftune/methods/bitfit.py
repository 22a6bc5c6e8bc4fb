"""bitfit: biases only, plus the head (methods.md section 1)."""

from sftune.errors import UsageError
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

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if not any(n.endswith("bias") and ctx.groups[n] != "head" for n, _ in ctx.model.named_parameters()):
            raise UsageError(f"method bitfit: {type(ctx.model).__name__} has no bias parameters (Llama, Mistral and "
                             "Qwen3 have none), so BitFit would train only the head. Choose another method, e.g. "
                             "--method stochastic (0.08% of the weights) or --method layernorm.")

    def trainable(self, name, param):
        return name.endswith("bias") or self.ctx.groups[name] == "head"
