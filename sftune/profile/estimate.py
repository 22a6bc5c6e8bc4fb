"""Analytic memory of a cell, without running it (`sftune memprofile --estimate`): for models too large for
the machine.

The model is built on the `meta` device from its config (nothing is allocated), the method is set up on it
as far as that works without data (a meta batch stands in for the training loader), and its `trainable()`
votes decide which parameters train, so the counts follow the method's own rules. Then:

    weights       every parameter and buffer (its dtype)
    gradients     every trainable parameter, same dtype
    optimizer     AdamW: two moments per trainable entry; update mode (MaskedAdamW) adds int16 per-entry
                  step counts (2 B) for every masked entry
    method state  the persistent layout each method documents (`method_state`), at its largest stage (DPS
                  Mix: W0 kept in Stage II, as whenever a Stage I is still ahead)
    activations   the tensors autograd saves in one forward pass of the meta model on a batch_size x seq_len
                  batch (each storage once); under fp16/bf16 floating activations are counted at 2 B (autocast
                  keeps a few in float32: a slight underestimate)

The peak is taken where the measured profiles put it: at the end of the forward pass (activations, no
gradients yet) or at the end of backward (gradients, activations freed), whichever is larger:
peak = weights + optimizer + method state + max(activations, gradients). Non-tensor memory (the runtime
part of a measured profile) and backward temporaries are not estimated.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from sftune.profile.common import Cell, load_config, run_config

HALF = {"fp16", "bf16"}


class _MetaContext:
    """What `RunContext` gives a method, for a model on the meta device."""

    def __init__(self, model, task, config, total_steps: int, groups, head, loader):
        self.model, self.task, self.config = model, task, config
        self.total_steps, self.groups, self.head = total_steps, groups, head
        self.train_loader = loader
        self.accelerator = _NoAccelerator()

    def generator(self, salt: str) -> torch.Generator:
        return torch.Generator().manual_seed(0)  # the meta device has no generator; nothing is drawn


class _NoAccelerator:
    process_index, num_processes, is_main_process = 0, 1, True
    device = torch.device("meta")

    def unwrap_model(self, model):
        return model


FUSED = "sftune-fused-estimate"  # the attention function registered with transformers for the meta forward


class _FusedAttention(torch.autograd.Function):
    """A fused SDPA kernel's footprint on the meta device. On meta tensors torch runs SDPA's math path, which
    saves the B x H x L x L probabilities; the CPU flash kernel and CUDA's flash and memory-efficient kernels
    save only q, k, v (key/value heads not repeated), the output and a logsumexp per query (measured on CPU:
    a SmolLM2-shaped layer at 512 tokens saves 25.4 MiB, the meta math path 35.9 MiB)."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = torch.empty_like(query)
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1]))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the estimate never runs backward
        raise NotImplementedError


def _fused_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: the fused stand-in where a fused kernel would run (no mask, no
    dropout: decoders with a causal mask and no padding); the real SDPA function otherwise (attention dropout
    makes CPU take the math path too)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return _FusedAttention.apply(query, key, value).transpose(1, 2).contiguous(), None


def meta_model(config):
    from transformers import AttentionInterface, AutoModelForSequenceClassification

    AttentionInterface.register(FUSED, _fused_attention)
    config = copy.deepcopy(config)  # from_config records the attention choice in the config it is given
    with torch.device("meta"):
        try:  # models without transformers' attention interface keep their own attention
            return AutoModelForSequenceClassification.from_config(config, attn_implementation=FUSED)
        except (ValueError, TypeError):
            return AutoModelForSequenceClassification.from_config(config)


def meta_batch(config, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    labels = (torch.zeros(batch_size, device="meta") if config.num_labels == 1
              else torch.zeros(batch_size, dtype=torch.long, device="meta"))
    # No attention mask: the synthetic one is all ones, which the models skip (on meta they cannot check).
    return {"input_ids": ids, "labels": labels}


def activation_bytes(model, batch: dict[str, torch.Tensor], half: bool = False) -> int:
    """Bytes autograd saves for backward in one training forward of `model` (meta tensors: no compute)."""
    params = {id(p) for p in model.parameters()}
    saved: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(t: torch.Tensor):
        base = t if t._base is None else t._base
        if id(t) not in params and id(base) not in params:
            size = base.untyped_storage().nbytes()
            if half and base.is_floating_point() and base.element_size() == 4:
                size //= 2
            saved[id(base)] = (base, size)  # keeps `base` alive, so ids stay unique
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(size for _, size in saved.values())


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def method_state(method, mask_mode: str, flat_grads: bool = False) -> tuple[dict[str, int], str]:
    """(bytes per kind of persistent state at the method's largest stage, how it was obtained): the method's
    own `state_estimate`. `flat_grads`: the run keeps flat gradients (Stochastic then keeps a flat score buffer
    too)."""
    state = method.state_estimate(mask_mode, flat_grads)
    return ({}, "not modelled") if state is None else (state, "estimated")


def _setup_on_meta(method, ctx) -> str | None:
    """Run the method's setup on the meta model; what failed, if it could not finish (then the state it set
    up before failing and its trainable() votes are used)."""
    try:
        method.setup(ctx)
    except Exception as e:  # noqa: BLE001 - data-dependent steps (a Fisher pass) cannot run on meta tensors
        method.ctx = ctx
        return f"{type(e).__name__}: {e}"
    return None


def estimate_cell(cell: Cell, config=None) -> dict[str, Any]:
    """The estimated profile of one cell, in the same shape as a measured one (status 'estimated')."""
    from sftune.models import group_of_params, head_prefixes
    from sftune.registry import get_method

    cfg = run_config(cell)
    config = config or load_config(cell.model, cell.task, cfg.model.dropout)
    model = meta_model(config)
    groups = group_of_params(model)
    method = get_method(cfg.method.name).from_config(cfg.method)
    batch = meta_batch(config, cell.batch_size // cfg.train.grad_accum, cell.seq_len)
    ctx = _MetaContext(model, _task(cell.task), cfg, cfg.train.max_steps, groups, head_prefixes(model), [batch])
    note = _setup_on_meta(method, ctx)
    for name, p in model.named_parameters():
        try:
            vote = method.trainable(name, p)
        except Exception:  # noqa: BLE001 - a rule needing state that setup could not build
            vote = None
        p.requires_grad_(True if vote is None else bool(vote))
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = _nbytes(params) + _nbytes(model.buffers())
    gradients = _nbytes(trainable)
    optimizer = 2 * gradients
    # Flat gradients (CUDA's default for the flat-capable methods) exist from the first forward on, so the
    # candidates' gradient bytes are part of the peak.
    from sftune.methods.flat_grads import wanted

    device = "cpu" if cell.cpu or not torch.cuda.is_available() else "cuda"
    flat = method.flat_capable and wanted(cfg.train.flat_grads, device, 1)
    flat_bytes = _nbytes(p for p in method.candidates.values() if p.requires_grad) if flat else 0
    state, how = method_state(method, cell.mask_mode, flat)
    if cell.mask_mode == "update" and state:
        masked = sum(p.numel() for p in method.candidates.values() if p.requires_grad)
        optimizer += 2 * masked  # MaskedAdamW's int16 per-entry step counts
    half = cell.precision in HALF
    activations = activation_bytes(model, batch, half)  # one micro-batch's graph exists at a time
    state_total = sum(state.values())
    at_peak = {"weights": weights, "gradients": flat_bytes, "optimizer": optimizer, "method_state": state_total,
               "activations": activations, "runtime": 0}
    if gradients > activations + flat_bytes:  # the end of backward, not of the forward, is the peak
        at_peak.update(gradients=gradients, activations=0)
    result = {
        "method": cell.method, "batch_size": cell.batch_size, "status": "estimated",
        "peak_bytes": sum(at_peak.values()),
        "parts": at_peak,
        "parts_max": {"weights": weights, "gradients": gradients, "optimizer": optimizer,
                      "method_state": state_total, "activations": activations, "runtime": 0},
        "method_state_detail": state, "method_state_how": how,
        "params": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trainable),
        "candidates": sum(p.numel() for p in method.candidates.values() if p.requires_grad),
    }
    if note:
        result["note"] = f"method setup stopped on the meta model ({note[:160]})"
    return result


def _task(name: str):
    from sftune.tasks import get_task

    return get_task(name)


def estimate(cells: list[Cell]) -> list[dict[str, Any]]:
    """Estimate every cell (one config load per model)."""
    from sftune.profile.common import failure

    configs: dict[tuple, Any] = {}
    out = []
    for cell in cells:
        key = (cell.model, cell.task, tuple(sorted(cell.sets.items())))
        try:
            if key not in configs:
                cfg = run_config(cell)
                configs[key] = load_config(cell.model, cell.task, cfg.model.dropout)
            out.append(estimate_cell(cell, configs[key]))
        except Exception as e:  # noqa: BLE001 - one cell's failure is that cell's result
            out.append({"method": cell.method, "batch_size": cell.batch_size, **failure(e)})
    return out
