"""r-drop: consistency between two dropout forwards (Wu et al., NeurIPS 2021; dropreg/R-Drop; methods.md
section 5).

The engine's forward gives prediction 1 and its loss L1; this plug-in runs the same batch once more (dropout
active, so another sub-network) for prediction 2 and loss L2, and returns `extra` such that the step's loss
`L1 + extra` is

    classification:  (CE1 + CE2) / 2 + alpha * [KL(p1 || p2) + KL(p2 || p1)] / 2
    regression:      (MSE1 + MSE2) / 2 + alpha * MSE(y1, y2)

with the KL summed over classes and averaged over the examples (`reduction=batchmean`, default) or summed
over them (`reduction=sum`, the reference README's `compute_kl_loss`); MSE(y1, y2) likewise mean or sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.lm_data import response_logits
from sftune.methods.base import Regularizer, RunContext
from sftune.models import set_dropout_modules
from sftune.options import option
from sftune.registry import register_regularizer
from sftune.regularizers.r3f import symmetric_kl


def rdrop_terms(logits1: torch.Tensor, logits2: torch.Tensor, loss1: torch.Tensor, loss2: torch.Tensor,
                alpha: float, regression: bool, reduction: str = "batchmean") -> tuple[torch.Tensor, torch.Tensor]:
    """(extra, consistency): `loss1 + extra` is the R-Drop objective; `consistency` is the unweighted term."""
    if regression:
        diff = (logits1.float().reshape(-1) - logits2.float().reshape(-1)).square()
        consistency = diff.sum() if reduction == "sum" else diff.mean()
    else:
        consistency = 0.5 * symmetric_kl(logits1, logits2, reduction)
    return 0.5 * (loss2 - loss1) + alpha * consistency, consistency


@register_regularizer
class RDrop(Regularizer):
    name = "r-drop"
    summary = "Two dropout forwards: mean of both losses + alpha * symmetric KL (regression: MSE between them)."
    details = ("Wu et al. 2021 (dropreg/R-Drop). Objective (CE1+CE2)/2 + alpha*(KL(p1||p2)+KL(p2||p1))/2, KL "
               "summed over classes, mean over examples (reduction=sum sums over examples, as the README's "
               "compute_kl_loss; the authors' GLUE BERT code instead sums both CEs and hard-codes 0.5 for alpha). "
               "Regression (STS-B): (MSE1+MSE2)/2 + alpha*MSE(y1, y2). The second forward runs in extra_loss on "
               "the same batch. Sets dropout to 0.1 everywhere (DPS appendix D), overriding model.dropout; "
               "dropout=none keeps the model's. Grid: alpha 0.1/0.5/1/3/5. Cannot be combined with mixout "
               "(which sets dropout to 0).")
    incompatible = ("mixout",)

    @dataclass
    class Options:
        alpha: float = option(1.0, "Weight of the consistency term (grid 0.1, 0.5, 1, 3, 5).")
        dropout: float | None = option(0.1, "Dropout probability set on the whole model (DPS grid: 0.1); "
                                            "none keeps the model's own.", ge=0, le=1)
        reduction: str = option("batchmean", "Over examples: batchmean (mean) or sum (the R-Drop README).",
                                choices=("batchmean", "sum"))

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        if self.options.dropout is not None:
            set_dropout_modules(ctx.model, self.options.dropout)
        self.regression = bool(ctx.task.is_regression)
        self.last: torch.Tensor | None = None

    def extra_loss(self, model, batch, outputs):
        second = model(**batch)
        # Causal-LM batches compare the predictions of the response tokens (lm_data.response_logits).
        extra, consistency = rdrop_terms(response_logits(outputs.logits, batch), response_logits(second.logits, batch),
                                         outputs.loss, second.loss,
                                         float(self.options.alpha), self.regression, self.options.reduction)
        self.last = consistency.detach()
        return extra

    def stats(self) -> dict[str, float]:
        key = "r-drop/mse" if getattr(self, "regression", False) else "r-drop/kl"
        return {} if self.last is None else {key: float(self.last.item())}
