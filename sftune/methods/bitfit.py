"""bitfit: biases only, plus the head (methods.md section 1)."""

from sftune.errors import UsageError
from sftune.methods.base import Method
from sftune.registry import register


@register
class BitFit(Method):
    name = "bitfit"
    summary = "Every bias (LayerNorm and pooler biases included) plus the whole head trains."
    details = ("Ben Zaken et al. 2022 (benzakenelad/BitFit). sftune keeps the run's optimizer settings (the "
               "authors' scripts use a constant LR: --set train.scheduler=constant_with_warmup). Biases never "
               "get weight decay in sftune.")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if not any(n.endswith("bias") and ctx.groups[n] != "head" for n, _ in ctx.model.named_parameters()):
            raise UsageError(f"method bitfit: {type(ctx.model).__name__} has no bias parameters (Llama, Mistral and "
                             "Qwen3 have none), so BitFit would train only the head. Choose another method, e.g. "
                             "--method stochastic (0.08% of the weights) or --method layernorm.")

    def trainable(self, name, param):
        return name.endswith("bias") or self.ctx.groups[name] == "head"
