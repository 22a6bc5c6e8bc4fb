"""attention: the attention sub-modules of every layer plus the head (methods.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

from sftune.methods.base import Method
from sftune.options import option
from sftune.registry import register


@dataclass
class AttentionOptions:
    modules: list[str] | None = option(
        None, "Substrings of parameter names to train (e.g. query,value); default: Q, K, V and the "
              "attention output projection, weights and biases, of every layer.")


@register
class Attention(Method):
    name = "attention"
    summary = "The 'Multi-Head' subset: Q, K, V and attention-output weights and biases of every layer, plus the head."
    details = ("Akbar-Tajari et al. 2022. Matched by module group: every attention parameter that is not a "
               "LayerNorm (BERT/RoBERTa/ELECTRA attention.self.* and attention.output.dense, BART self_attn/"
               "encoder_attn q/k/v/out_proj, DeBERTa query_proj/key_proj/value_proj and attention.output.dense). "
               "--set method.modules=query,value narrows it to names containing any of the given substrings.")
    Options = AttentionOptions

    def trainable(self, name, param):
        if self.ctx.groups[name] == "head":
            return True
        if self.ctx.groups[name] == "layernorm":
            return False
        low = name.lower()
        if self.options.modules:
            return any(m in low for m in self.options.modules)
        return "attention" in low or "attn" in low
