"""llrd: layer-wise learning-rate decay (Howard & Ruder 2018; ELECTRA's fine-tuning recipe; methods.md
section 5).

With N layers (`models.layer_stack`: BART's encoder layers then decoder layers) and l counted from the top
(l = 0 the top layer):

    head, pooler, untied lm_head, final norm   lr
    layer l                                    lr * eta^(l + 1)
    everything else (embeddings, ...)          lr * eta^(N + 1)

A causal LM's untied output projection (lm_head) is the output layer: it trains at lr, like a head. A tied
lm_head is the input embedding's tensor (one parameter, listed under the embedding): it trains at the
embedding's rate, since the lowest layer of the model reads the same weights.

A decoder's final norm (Llama/Qwen/Mistral `model.norm`, GPT-2 `transformer.ln_f`) normalises the top layer's
output right under the lm_head or score head, so it trains with them at lr, not with the embeddings at the
bottom. It is found by structure (`architecture.final_norms`: a norm outside the stack that runs after the top
layer), so BART's `layernorm_embedding` (registered after the layers, run before them) and BERT's embeddings
LayerNorm keep the embeddings' rate.

It only sets each optimizer group's initial `lr` (multiplying what is there, so it composes with other
plug-ins); the scheduler scales every group's initial lr alike, so the schedule's shape is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftune.architecture import final_norms, output_layer_parameters
from sftune.methods.base import Regularizer, RunContext
from sftune.models import layer_stack, pooler_modules
from sftune.options import option
from sftune.registry import register_regularizer


def depth_factors(model, head: tuple[str, ...], eta: float) -> dict[str, float]:
    """LR multiplier of every parameter (by name)."""
    stack = layer_stack(model)
    n = len(stack)
    pooler = [name for name, _ in pooler_modules(model)]
    top = tuple(f"{name}." for name in [*pooler, *final_norms(model)]) + tuple(head)
    output_layer = output_layer_parameters(model)
    out = {}
    for pname, _ in model.named_parameters():
        if (top and pname.startswith(top)) or pname in output_layer:
            out[pname] = 1.0
            continue
        factor = eta ** (n + 1)
        for k, (lname, _) in enumerate(stack):
            if pname.startswith(lname + "."):
                factor = eta ** (n - k)  # k = 0 bottom .. n-1 top; l = n-1-k, eta^(l+1) = eta^(n-k)
                break
        out[pname] = factor
    return out


@register_regularizer
class LLRD(Regularizer):
    name = "llrd"
    summary = "Layer-wise LR decay: layer l from the top trains at lr*eta^(l+1), embeddings lowest, head at lr."
    details = ("Howard & Ruder 2018; ELECTRA fine-tunes with eta 0.9 (DPS appendix C, the electra preset). sftune "
               "follows methods.md: head, pooler and a causal LM's untied lm_head at lr (a tied lm_head is the input "
               "embedding: its rate), top layer lr*eta, layer l from the top lr*eta^(l+1), embeddings and every "
               "other parameter outside the layers (DeBERTa's relative embeddings, ELECTRA's embeddings_project, "
               "BART's layernorm_embedding) lr*eta^(N+1). sftune's choice: a decoder's final norm (Llama/Qwen/Mistral "
               "model.norm, GPT-2 ln_f: a norm outside the layers that runs on the top layer's output, found by "
               "running the model once) trains at lr, with the head it feeds. ELECTRA's own code uses one more "
               "factor eta below the head (top layer eta^2, embeddings eta^(N+2)). BART: the stack is encoder then "
               "decoder layers. Groups are ordered highest lr first, so the logged lr is the head's.")

    @dataclass
    class Options:
        eta: float = option(0.9, "Decay per layer (ELECTRA uses 0.9; 0.95 is also common).", gt=0, le=1)

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.factors = depth_factors(ctx.model, ctx.head, float(self.options.eta))
        self.n_layers = len(layer_stack(ctx.model))

    def param_groups(self, groups: list[dict]) -> list[dict]:
        for group in groups:
            factors = {self.factors[n] for n in group["names"]}
            if len(factors) != 1:  # the engine gives one group per parameter; never mix depths in one group
                raise RuntimeError(f"llrd: a parameter group spans several depths: {group['names']}")
            group["lr"] = group["lr"] * factors.pop()
        # Highest lr first (stable): the loop logs the first group's lr, which should be the peak (head) lr.
        return sorted(groups, key=lambda g: -g["lr"])

    def summary_stats(self) -> dict:
        return {"llrd": {"eta": float(self.options.eta), "layers": getattr(self, "n_layers", None)}}
