"""r3f: noise-stability regularisation (Aghajanyan et al., ICLR 2021; fairseq examples/rxf; methods.md
section 5).

A second forward of the same batch sees its word embeddings plus noise, `E(input_ids) + z` with
z ~ N(0, sigma^2) or U(-sigma, sigma); the loss gains

    lambda * [ KL(p || p~) + KL(p~ || p) ]      summed over classes, averaged over the examples (batchmean)

where p and p~ are the softmax predictions of the clean (the engine's) and the noised forward. That is the
fairseq criterion: its symmetric KL is summed over classes and examples and divided by the batch size, then
scaled to its summed cross-entropy, i.e. lambda * batchmean against a mean cross-entropy. As there, the
noised forward uses detached embeddings (no gradient to the embedding table through it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sftune.errors import UsageError
from sftune.lm_data import response_logits
from sftune.methods.base import Regularizer, RunContext
from sftune.options import option
from sftune.registry import register_regularizer


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p || q) + KL(q || p) of the softmax distributions, summed over classes (last dim), then averaged
    over the examples ('batchmean') or summed ('sum'). Computed in float32."""
    lp = F.log_softmax(p_logits.float(), dim=-1)
    lq = F.log_softmax(q_logits.float(), dim=-1)
    per_example = ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)  # = KL(p||q) + KL(q||p)
    return per_example.sum() if reduction == "sum" else per_example.mean()


def input_embedding(model: nn.Module) -> nn.Module:
    """The token-embedding module the (encoder's) forward really calls. BART: its encoder's embed_tokens (tied
    to, but not the same module as, `get_input_embeddings()`); noise goes into the encoder input only."""
    base = model
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        base = model.get_encoder()
    emb = base.get_input_embeddings()
    if emb is None:
        raise UsageError(f"r3f cannot find the input embeddings of {type(model).__name__}.")
    return emb


@register_regularizer
class R3F(Regularizer):
    name = "r3f"
    summary = "Second forward on noised word embeddings; adds lambda * symmetric KL of the two predictions."
    details = ("Aghajanyan et al. 2021 (fairseq examples/rxf, criterion sentence_prediction_r3f). Noise normal "
               "N(0, sigma^2) or uniform U(-sigma, sigma) on the word-embedding output (before positions; same as "
               "passing inputs_embeds = E(input_ids) + noise, but also right for RoBERTa's padding-aware "
               "positions and for BART, which refuses inputs_embeds). Term: lambda * (KL(p||p~) + KL(p~||p)), "
               "summed over classes, mean over examples (fairseq's reduction); embeddings detached in the noised "
               "forward as in fairseq; dropout active in both forwards. Classification only (STS-B is an error). "
               "Grid (DPS appendix D): noise normal/uniform, sigma 1e-5, lambda 0.1/0.5/1/5. Set lambda with "
               "--reg r3f:lambda=1 (stored as lambda_).")

    @dataclass
    class Options:
        noise: str = option("uniform", "Noise distribution: normal N(0, sigma^2) or uniform U(-sigma, sigma) "
                                       "(fairseq's default).", choices=("normal", "uniform"))
        sigma: float = option(1e-5, "Noise scale (fairseq --eps).")
        lambda_: float = option(1.0, "Weight of the symmetric KL term (--reg r3f:lambda=...).")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        if ctx.task.is_regression:
            raise UsageError(f"regulariser r3f needs a classification task, but {ctx.task.name} is a regression "
                             "task; use r-drop (it handles regression) or drop --reg r3f.")
        self.embedding = input_embedding(ctx.model)
        self.generator = ctx.generator("r3f")
        self.last_kl: torch.Tensor | None = None

    def _noise_hook(self, module, inputs, output):
        sigma = float(self.options.sigma)
        noise = torch.empty(output.shape, dtype=output.dtype, device=output.device)
        if self.options.noise == "normal":
            noise.normal_(0.0, sigma, generator=self.generator)
        else:
            noise.uniform_(-sigma, sigma, generator=self.generator)
        return output.detach() + noise

    def extra_loss(self, model, batch, outputs):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        handle = self.embedding.register_forward_hook(self._noise_hook)
        try:
            noised = model(**inputs)
        finally:
            handle.remove()
        # Causal-LM batches compare the predictions of the response tokens (lm_data.response_logits).
        kl = symmetric_kl(response_logits(outputs.logits, batch), response_logits(noised.logits, batch))
        self.last_kl = kl.detach()
        return float(self.options.lambda_) * kl

    def stats(self) -> dict[str, float]:
        return {} if self.last_kl is None else {"r3f/kl": float(self.last_kl.item())}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()} if hasattr(self, "generator") else {}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state and hasattr(self, "generator"):
            self.generator.set_state(state["generator"])
