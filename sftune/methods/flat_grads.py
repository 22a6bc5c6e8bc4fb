"""Flat gradients: the candidates' gradients as views into one 1-D buffer, so a selection is applied to the
whole model in a few kernels instead of a few per parameter.

Why: on a GPU, masking or selecting per parameter costs one eager dispatch and kernel launch per operator
and parameter (~10-20 us each; roberta-base has ~200 candidate tensors), far more than the bytes moved
(`bench/selection_ops.py` counts the operators). With the gradients in one buffer, Random/Top/Stochastic
Tuning zero everything but k entries with one gather, one fill and one scatter, and a Child-Tuning mask is
one multiply.

How: before each optimizer step's first forward, every candidate that trains gets `param.grad` = its view
of the buffer, and the buffer is zeroed. Autograd then accumulates into the existing `.grad` in place (it
does so whenever a gradient is already defined), so after backward the buffer holds the step's gradients
in candidate order: the same layout as the selectors' flat indices. The views are checked after backward
(a pointer comparison per parameter, no kernel): if anything replaced a gradient, the step falls back to
the per-parameter path, so correctness never rests on the in-place accumulation.

Cost: the buffer lives from the first forward to the optimizer step instead of gradients appearing during
backward, so the peak memory can grow by up to the candidates' gradient bytes. Hence `train.flat_grads`:
`auto` (default) uses it on CUDA in single-process runs, where launches are the cost and memory is ample;
`on` / `off` force it. Training is bitwise the same either way (tests compare the two), except that
Stochastic Tuning samples with exponential keys over its then flat score buffer (same distribution).

A candidate that gets no gradient in backward (an unused module) would have a zero gradient here instead of
none, and AdamW would move it by momentum and weight decay: so the first step runs without the buffer, and
candidates that got no gradient then are left out of it for the run.
"""

from __future__ import annotations

import torch

from sftune.select import FlatBuffer


def wanted(setting: str, device: torch.device, processes: int) -> bool:
    """Whether flat gradients are used for `train.flat_grads = setting`."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return torch.device(device).type == "cuda" and processes == 1


class FlatGrads:
    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = params
        self.buffer: FlatBuffer | None = None  # built after the first step (which shows the unused parameters)
        self._attached: list[tuple[torch.nn.Parameter, torch.Tensor, int]] = []  # (param, view, view pointer)

    @staticmethod
    def supported(params: dict[str, torch.nn.Parameter]) -> bool:
        """One dtype and one device, so one buffer holds them all."""
        return len({(p.dtype, p.device) for p in params.values()}) == 1

    def build(self) -> None:
        """After the first backward: lay out the buffer in candidate order (every candidate, so that its flat
        indices are the selectors'); only the candidates that received a gradient get attached."""
        first = next(iter(self.params.values()))
        self.buffer = FlatBuffer({n: p.shape for n, p in self.params.items()}, first.dtype, first.device, fill=0.0)
        self._attached = [(p, self.buffer.views[n], self.buffer.views[n].data_ptr())
                          for n, p in self.params.items() if p.requires_grad and p.grad is not None]

    def attach(self) -> None:
        """Zero the buffer and make its views the gradients (once per optimizer step: a later micro-batch of
        the same step finds them attached and accumulates)."""
        if not self._attached or self._attached[0][0].grad is not None:
            return
        self.buffer.data.zero_()
        for p, view, _ in self._attached:
            p.grad = view

    def holds_grads(self) -> bool:
        """True if every attached gradient is still its view of the buffer (pointer checks, no kernel)."""
        return bool(self._attached) and all(p.grad is not None and p.grad.data_ptr() == ptr
                                            for p, _, ptr in self._attached)

    @property
    def data(self) -> torch.Tensor:
        return self.buffer.data
