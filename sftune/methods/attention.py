"""attention: the attention projections of every layer plus the head (methods.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

from sftune.architecture import attention_projection_parameters
from sftune.errors import UsageError
from sftune.methods.base import Method
from sftune.options import option
from sftune.registry import register


@dataclass
class AttentionOptions:
    modules: list[str] | None = option(
        None, "Substrings of parameter names that narrow the attention projections (e.g. query,value); "
              "default: Q, K, V and the attention output projection, weights and biases, of every layer.")


@register
class Attention(Method):
    name = "attention"
    summary = "The 'Multi-Head' subset: Q, K, V and attention-output weights and biases of every layer, plus the head."
    details = ("Akbar-Tajari et al. 2022. The attention projections are found by structure (sftune.architecture: "
               "the q/k/v/qkv/o projections inside each layer's attention block): BERT/RoBERTa/ELECTRA "
               "attention.self.query/key/value and attention.output.dense, BART self_attn/encoder_attn "
               "q/k/v/out_proj, DeBERTa query_proj/key_proj/value_proj and attention.output.dense, Llama/Qwen/"
               "Mistral q/k/v/o_proj, GPT-2 attn.c_attn and attn.c_proj (not mlp.c_proj). Norms inside the "
               "attention block (Qwen3's q_norm/k_norm) and DeBERTa-v2's unshared pos_key_proj/pos_query_proj "
               "are not trained. --set method.modules=query,value narrows it to names containing any of the "
               "given substrings.")
    Options = AttentionOptions

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.attention = attention_projection_parameters(ctx.model)
        if not self.attention:
            raise UsageError(f"attention: found no attention projections (q/k/v/o) in {type(ctx.model).__name__}'s "
                             "layers; use a method that does not depend on module roles (e.g. bitfit, layernorm).")
        if self.options.modules:
            wanted = [m.lower() for m in self.options.modules]
            self.attention = {n for n in self.attention if any(m in n.lower() for m in wanted)}
            if not self.attention:
                raise UsageError(f"attention: method.modules={','.join(self.options.modules)} matches no attention "
                                 "projection parameter; give substrings of their names (e.g. query,value or "
                                 "q_proj,v_proj).")

    def trainable(self, name, param):
        return self.ctx.groups[name] == "head" or name in self.attention
