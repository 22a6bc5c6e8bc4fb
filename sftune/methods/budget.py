"""Shared base of the per-step, global-budget methods (random, top, stochastic; methods.md sections 1, 4).

Each step, k entries are chosen among all candidate entries of the model (weights and biases of Linear-like
layers, GPT-2's Conv1D included, and LayerNorm/RMSNorm parameters of the pre-trained model; embeddings, and a
causal LM's lm_head, excluded unless `method.include_embeddings`; the head trains densely). Non-candidate
parameters outside the head are frozen: the budget is the whole sparse update. k defaults to the model's BitFit
count (all biases outside the head), as in the paper; a model without biases (Llama, Mistral) defaults to the
paper's 0.08% of the candidate entries instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sftune.architecture import is_norm, is_projection, transposed
from sftune.errors import UsageError
from sftune.methods.masking import MaskedMethod
from sftune.options import option


@dataclass
class BudgetOptions:
    k: int | None = option(None, "Entries updated per step; default: the model's BitFit count (its biases), or "
                           "0.08% of the candidates for a model without biases (Llama, Mistral).", ge=1)
    density: float | None = option(None, "Alternative to k: the share of candidate entries per step.", gt=0,
                                   le=1)
    include_embeddings: bool = option(False, "Let embedding entries (and an untied lm_head) be selected (sftune "
                                      "default: excluded; tied weights count once).")
    lora_rank: int | None = option(None, "Alternative to k: the entries LoRA of this rank trains on this model "
                                   "(its adapters on the default targets, not the head), for equal-budget "
                                   "comparisons with --method lora.", ge=1)

    def check(self) -> list[str]:
        given = [f"{name}={value}" for name, value in (("k", self.k), ("density", self.density),
                                                         ("lora_rank", self.lora_rank)) if value is not None]
        return [f"set one of method.k, method.density and method.lora_rank, not {' and '.join(given)}"] \
            if len(given) > 1 else []


# Stochastic Tuning's budget as a share of the candidates: the paper's 0.08%, used when the model has no biases.
BIAS_FREE_DENSITY = 0.0008


def candidate_modules(model: nn.Module) -> dict[str, str]:
    """Parameter name -> kind ('linear_weight', 'conv1d_weight', 'bias', 'ln_weight', 'ln_bias', 'embedding') for
    Linear-like layers (nn.Linear, GPT-2's Conv1D), norms (LayerNorm, RMSNorm) and embedding tables. A weight
    shared by two modules (a lm_head tied to the input embedding) has one name in named_parameters(), its
    first owner's: it is that owner's kind (the embedding), counted once."""
    names = {id(p): n for n, p in model.named_parameters()}
    kinds = {}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if is_projection(module):
            own = ((module.weight, "conv1d_weight" if transposed(module) else "linear_weight"), (module.bias, "bias"))
        elif is_norm(module):
            own = ((module.weight, "ln_weight"), (getattr(module, "bias", None), "ln_bias"))
        elif isinstance(module, nn.Embedding):
            own = ((module.weight, "embedding"),)
        else:
            continue
        for param, kind in own:
            if isinstance(param, nn.Parameter) and names.get(id(param)) == prefix + ("bias" if kind in (
                    "bias", "ln_bias") else "weight"):
                kinds[names[id(param)]] = kind
    return kinds


class BudgetMethod(MaskedMethod):
    Options = BudgetOptions
    flat_capable = True  # select() returns FlatIndices

    def setup(self, ctx) -> None:
        self.kinds = candidate_modules(ctx.model)
        super().setup(ctx)
        names = list(self.candidates)
        if not names:
            raise UsageError(f"method {self.name}: the model has no Linear or norm parameters to select from.")
        n = sum(p.numel() for p in self.candidates.values())
        bitfit = sum(p.numel() for name, p in self.params.items()
                     if name.endswith("bias") and ctx.groups[name] != "head")
        o = self.options
        unset = o.k is None and o.lora_rank is None
        density = o.density if o.density is not None else (BIAS_FREE_DENSITY if unset and not bitfit else None)
        self.k = o.k if o.k is not None else (round(density * n) if density is not None else bitfit)
        if o.lora_rank is not None:
            from sftune.methods.lora import adapter_entries

            self.k = adapter_entries(ctx.model, o.lora_rank)
        if not 1 <= self.k <= n:
            raise UsageError(f"method {self.name}: k={self.k} must be between 1 and the {n:,} candidate entries.")
        self.generator = ctx.generator(self.name)
        self.flat = None  # allocated by subclasses that score entries

    def candidate(self, name, param) -> bool:
        group = self.ctx.groups[name]
        if group == "head" or name not in self.kinds:
            return False
        return self.options.include_embeddings or group != "embeddings"

    def trainable(self, name, param):
        # The budget is the whole sparse update: only candidates (and the dense head) train.
        return self.ctx.groups[name] == "head" or self.candidate(name, param)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def stats(self):
        return {"budget_k": self.k}

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int] | None:
        k = getattr(self, "k", None)  # unset when setup stopped early on the meta model
        if k is None:
            return None
        return {"masks": 8 * int(k)}  # this step's k indices (int64) stay until the next step
