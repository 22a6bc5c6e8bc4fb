"""Exact masked AdamW for ``--mask-mode update``: only selected entries change, bitwise.

Masking the gradient (``--mask-mode grad``) does not freeze unselected entries under AdamW: their momentum
keeps moving them and decoupled weight decay shrinks them every step. Here the update itself is masked:
``masked_adamw_step_`` (``masked_step.py``, which also says why the result is exact: per-entry step counts,
bias-correction tables, the sparse and dense-mask paths) updates the selected entries and leaves the others
bitwise unchanged. Parameters without a mask and without per-entry counts run torch's own op sequence
(or, with ``fused=True``, ``torch._fused_adamw_``, like ``AdamW(fused=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch.optim import Optimizer

from .masked_step import COUNT_MAX, _check_betas, masked_adamw_step_

__all__ = ["MaskedAdamW"]


class MaskedAdamW(Optimizer):
    """AdamW (decoupled weight decay, as ``torch.optim.AdamW``) with optional per-parameter update masks.

    ``set_mask(param, m)`` with ``m`` a bool tensor shaped like ``param`` or an int tensor of flat indices
    restricts the following ``step()`` calls to those entries (exactly; see ``masked_step.py``), until
    the mask is changed or cleared (``set_mask(param, None)`` / ``clear_masks()``). A parameter that never
    had a mask is updated exactly like ``torch.optim.AdamW`` (bit for bit with the default single-tensor
    path; ``fused=True`` uses ``torch._fused_adamw_`` for those parameters, like ``AdamW(fused=True)``).
    The first masked step of a parameter gives it int16 per-entry step counts (2 B/param), initialised to its
    dense step count; from then on every step of that parameter uses per-entry bias correction.

    State per parameter: ``step`` (float32 0-d tensor: steps this parameter took part in), ``exp_avg``,
    ``exp_avg_sq`` and, once masked, ``step_count`` (int16). ``state_dict()`` / ``load_state_dict()`` keep
    ``step_count`` int16 and load with ``torch.load(weights_only=True)``. Masks are not part of the state
    dict: selectors recompute them. LR schedulers work as with any optimizer (``lr``/``initial_lr`` in
    ``param_groups``). Not supported: amsgrad, maximize, sparse gradients, complex parameters.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        fused: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=bool(fused))
        self.chunk_size = chunk_size
        self._masks: dict[int, torch.Tensor] = {}
        self._ids: set[int] = set()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        b1, b2 = self.param_groups[-1]["betas"]
        _check_betas(float(b1), float(b2))
        self._ids.update(id(p) for p in self.param_groups[-1]["params"])

    # ------------------------------------------------------------------ masks
    def set_mask(self, param: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Restrict updates of ``param`` to ``mask`` (bool, same shape) or to flat indices (int, 1-D).

        ``None`` removes the mask (dense updates again). An empty index tensor or all-False mask freezes
        ``param`` for the following steps.
        """
        if id(param) not in self._ids:
            raise KeyError("param is not managed by this optimizer")
        if mask is None:
            self._masks.pop(id(param), None)
            return
        if mask.device != param.device:
            raise ValueError(f"mask on {mask.device}, param on {param.device}")
        if mask.dtype == torch.bool:
            if mask.shape != param.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} != param shape {tuple(param.shape)}")
        elif not mask.is_floating_point() and not mask.is_complex():
            mask = mask.reshape(-1)
            if mask.dtype != torch.long:
                mask = mask.long()
        else:
            raise TypeError(f"mask must be bool or an integer index tensor, got {mask.dtype}")
        self._masks[id(param)] = mask

    def get_mask(self, param: torch.Tensor) -> torch.Tensor | None:
        return self._masks.get(id(param))

    def clear_masks(self) -> None:
        self._masks.clear()

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = (float(b) for b in group["betas"])
            lr = float(group["lr"])
            eps = float(group["eps"])
            wd = float(group["weight_decay"])
            fused = bool(group.get("fused", False))
            fp: list[torch.Tensor] = []
            fg: list[torch.Tensor] = []
            fm: list[torch.Tensor] = []
            fv: list[torch.Tensor] = []
            fs: list[torch.Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("MaskedAdamW does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("MaskedAdamW does not support complex parameters")
                state = self.state[p]
                if len(state) == 0:
                    on_dev = fused
                    state["step"] = torch.zeros(
                        (), dtype=torch.float32, device=p.device if on_dev else torch.device("cpu")
                    )
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mask = self._masks.get(id(p))
                if mask is None and "step_count" not in state:
                    if fused:
                        fp.append(p)
                        fg.append(grad)
                        fm.append(state["exp_avg"])
                        fv.append(state["exp_avg_sq"])
                        fs.append(state["step"])
                    else:
                        _dense_adamw_(p, grad, state, lr, beta1, beta2, eps, wd)
                    continue
                if "step_count" not in state:
                    start = min(int(state["step"].item()), COUNT_MAX)
                    state["step_count"] = torch.full(p.shape, start, dtype=torch.int16, device=p.device)
                state["step"] += 1
                masked_adamw_step_(
                    p, grad, state["exp_avg"], state["exp_avg_sq"], state["step_count"], mask,
                    lr, beta1, beta2, eps, wd, chunk_size=self.chunk_size,
                )
            if fp:
                for (dev, _), ((dp, dg, dm, dv, ds), _) in Optimizer._group_tensors_by_device_and_dtype(
                    [fp, fg, fm, fv, fs]
                ).items():
                    torch._foreach_add_(ds, 1)
                    torch._fused_adamw_(
                        dp, dg, dm, dv, [], ds, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                        weight_decay=wd, eps=eps, maximize=False, grad_scale=None, found_inf=None,
                    )
        return loss

    # ------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch's loader casts every floating param's tensor state to the param dtype; step counts must
        # stay int16, so they bypass it and are re-attached (same id -> param mapping as torch uses).
        counts = {}
        states = {}
        for pid, st in state_dict["state"].items():
            st = dict(st)
            if "step_count" in st:
                counts[pid] = st.pop("step_count")
            states[pid] = st
        super().load_state_dict({**state_dict, "state": states})
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        id_map = dict(zip(saved_ids, params))
        for pid, c in counts.items():
            p = id_map[pid]
            self.state[p]["step_count"] = c.to(device=p.device, dtype=torch.int16)


def _dense_adamw_(
    p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float, eps: float, wd: float
) -> None:
    """torch.optim.AdamW's single-tensor step, op for op (so the results are bitwise identical)."""
    step_t = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    step_t += 1
    if wd != 0:
        p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)

