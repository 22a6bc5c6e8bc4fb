"""layernorm: LayerNorm (and RMSNorm) weights and biases plus the head (methods.md section 1)."""

from sftune.methods.base import Method
from sftune.registry import register


@register
class LayerNormOnly(Method):
    name = "layernorm"
    summary = "Every LayerNorm weight and bias (RMSNorm weights in Llama-like decoders) plus the head."
    details = ("Akbar-Tajari et al. 2022 found LayerNorm the most transferable module (sftune choice to "
               "include it as a method). Embedding LayerNorms count too.")

    def trainable(self, name, param):
        return self.ctx.groups[name] in ("layernorm", "head")
