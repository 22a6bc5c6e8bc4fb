"""What DPS Dense and DPS Mix share (methods.md section 3): the stage schedule, the per-matrix top selection,
the options both take, and the stage machinery on top of `MaskedMethod`.

Schedule, in optimizer steps t = 1..T:

    U = max(1, int(T * ur))     stage length (sftune: at least 1, so tiny smoke runs still alternate);
                                with stage_steps=reference, T is the reference script's config.max_steps
                                (one epoch's steps in low-resource runs: `script_steps`)
    s = ceil(t / U)             stage index; odd = Stage I, even = Stage II; cycle = (s + 1) // 2

GAM/FAM are reset when a cycle starts (every odd stage) and freed as soon as the Stage II mask is computed
from them, so they never coexist with the mask. The last stage is as long as the formula makes it (a short
trailing stage is normal; a trailing Stage I's GAM is simply never used).

Selection per matrix: exactly ceil((1 - p) * N) entries with the largest scores, ties to the lower flat index
(`sftune.select.top_fraction_mask`). The budget is computed from p as written in decimal (p = 0.7 keeps
3/10 of N exactly), so float rounding of 1 - p can never add an entry.

GAM: bfloat16 by default (2 B per masked weight), each step's float32 sum rounded once to nearest or, with
gam_rounding=stochastic, stochastically; float32 as in the reference. Measurements: docs/methods.md (DPS).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from sftune.architecture import projection_weights
from sftune.errors import UsageError
from sftune.methods.base import RunContext
from sftune.methods.masking import MaskedMethod
from sftune.options import option
from sftune.select import pack_bits, top_fraction_mask, unpack_bits

GAM_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
GAM_ROUNDINGS = ("nearest", "stochastic")
STAGE_STEPS = ("run", "reference")
DROPOUT_RULES = ("model", "reference")
_SR_CHUNK = 1 << 18  # CPU: entries per chunk of the bfloat16 GAM accumulation (temporaries ~1 MiB each)


# ------------------------------------------------------------------------------------------- schedule
def stage_length(total_steps: int, ur: float) -> int:
    """U = int(T * ur) as the reference computes it, but at least 1 (U = 0 would divide by zero)."""
    return max(1, int(total_steps * ur))


def script_steps(total_steps: int, train_size: int | None, batch_size: int) -> int:
    """The step count the reference script writes into the model config (`config.max_steps`,
    run_trainer.py:357-360), from which it takes U and DPS Dense's dropout: one epoch's steps
    ceil(train_size / batch) in low-resource runs (which still train three epochs), else the run's total steps
    (its full-data scripts pass --max_steps = three epochs' steps)."""
    return math.ceil(int(train_size) / int(batch_size)) if train_size else int(total_steps)


def stage_of(step: int, U: int) -> int:
    """s = ceil(t / U), 1-based."""
    return -(-int(step) // int(U))


def is_stage_two(stage: int) -> bool:
    return stage > 0 and stage % 2 == 0


def cycle_of(stage: int) -> int:
    return (stage + 1) // 2


def stage_bounds(stage: int, U: int, total_steps: int) -> tuple[int, int]:
    """First and last optimizer step of a stage (the last stage may be short)."""
    return (stage - 1) * U + 1, min(stage * U, total_steps)


# ------------------------------------------------------------------------------------------ selection
def keep_count(numel: int, p: float) -> int:
    """ceil((1 - p) * N), with p taken as the decimal it was written as (repr), so 0.7 keeps 3N/10 exactly."""
    keep = 1 - Fraction(repr(float(p)))
    return min(int(numel), max(0, math.ceil(keep * int(numel))))


def top_mask(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask of the ceil((1-p) N) largest scores of one matrix; ties to the lower flat index."""
    return top_fraction_mask(scores.float(), keep_count(scores.numel(), p))


# ------------------------------------------------------------------------------------------------ GAM
_NOISE_SPAN = 1 << 16  # a chunk reads its noise at a random offset in [0, span) of a fresh per-step buffer


def gam_chunk(device: torch.device) -> int:
    """Entries per chunk of the bfloat16 accumulation: cache-sized on the CPU (temporaries ~1 MiB); on an
    accelerator a whole matrix at once (kernel launches, not caches, are what costs there)."""
    return _SR_CHUNK if torch.device(device).type == "cpu" else 1 << 23


@functools.lru_cache(maxsize=None)
def multi_tensor_gam(device: torch.device) -> bool:
    """Whether the round-to-nearest GAM update is one multi-tensor call (accelerators: launches are the cost)
    rather than cache-sized chunks per matrix (CPU: the mixed-dtype in-place addcmul is ~10x slower there).
    Checked once per device on a probe: the call must run and give bitwise addcmul_bf16_'s result."""
    return torch.device(device).type != "cpu" and _multi_tensor_gam_agrees(device)


def _multi_tensor_gam_agrees(device) -> bool:
    gen = torch.Generator().manual_seed(0)
    acc = (torch.rand(4096, generator=gen) * 4).to(torch.bfloat16)
    grad = torch.randn(4096, generator=gen) * 0.1
    want = addcmul_bf16_(acc.clone(), grad, 4096)
    try:
        got = acc.to(device)
        g = grad.to(device)
        torch._foreach_addcmul_([got], [g], [g])
        return torch.equal(got.cpu(), want)
    except RuntimeError:
        return False


def sr_noise(generator: torch.Generator, device: torch.device, chunks: int,
             chunk_size: int) -> tuple[torch.Tensor, list[int]]:
    """One step's rounding noise: uniform 16-bit integers (int32) and one random offset per chunk."""
    noise = torch.empty(chunk_size + _NOISE_SPAN, dtype=torch.int32, device=device)
    noise.random_(0, 1 << 16, generator=generator)
    offsets = torch.randint(0, _NOISE_SPAN, (max(1, chunks),), generator=generator, device=device).tolist()
    return noise, offsets


def n_chunks(numel: int, chunk_size: int) -> int:
    return -(-int(numel) // chunk_size)


def addcmul_bf16_(acc: torch.Tensor, grad: torch.Tensor, chunk_size: int, noise: torch.Tensor | None = None,
                  offsets: list[int] | None = None) -> torch.Tensor:
    """acc += grad * grad for a bfloat16 `acc`: the sum is formed in float32 and rounded once, to nearest
    (noise None) or stochastically (up to the next bfloat16 with probability (distance to the lower one) /
    (their spacing), so E[acc] is the exact sum at any stage length).

    Round-to-nearest stops growing once the sum is ~2^8 increments of equal size (an increment below half a
    unit in the last place vanishes: 1000 additions of 1e-4 give 0.031, not 0.1); on real gradients (heavy-
    tailed, see docs) it still kept the float32 top sets as well as stochastic rounding did. Stochastic
    rounding: add 16 uniform random bits to the float32 bit pattern, clear the low 16 bits (values are
    non-negative, so a carry into the exponent is the right round-up) and convert, which is then exact. The
    noise of chunk i is `noise[offsets[i]:][:chunk]` (`sr_noise`): fresh every step, so each entry's noise is
    uniform and independent across steps, which is all unbiasedness needs, and one small draw per step
    replaces 16 random bits per entry. Chunked: temporaries are chunk-sized (the CPU's mixed-dtype in-place
    addcmul is ~10x slower than this).
    """
    if acc.dtype != torch.bfloat16 or not acc.is_contiguous():
        raise ValueError("acc must be a contiguous bfloat16 tensor")
    flat = acc.view(-1)
    g = grad.reshape(-1)
    n = flat.numel()
    x = torch.empty(min(chunk_size, n), dtype=torch.float32, device=acc.device)
    for i, start in enumerate(range(0, n, chunk_size)):
        end = min(n, start + chunk_size)
        xv = x[: end - start]
        xv.copy_(flat[start:end])
        xv.addcmul_(g[start:end], g[start:end])
        if noise is not None:
            off = offsets[i % len(offsets)]
            xv.view(torch.int32).add_(noise[off : off + end - start]).bitwise_and_(-(1 << 16))
        flat[start:end].copy_(xv)  # round to nearest (exact after the stochastic cut)
    return acc


# -------------------------------------------------------------------------------------------- options
@dataclass
class DPSOptions:
    p: float = option(0.3, "Share of each matrix NOT updated in Stage II (reference name reserve_p): 0.3 updates "
                           "70%. Grid 0.1..0.5.", ge=0, lt=1)
    ur: float = option(0.05, "Stage length as a share of the total optimizer steps: U = int(T * ur) (at least 1). "
                             "Grid 0.05, 0.1, 0.2.", gt=0, le=1)
    gam_dtype: str = option("bfloat16", "GAM accumulator: bfloat16 (2 B per masked weight) or float32 (4 B, as "
                                        "the reference).", choices=tuple(GAM_DTYPES))
    gam_rounding: str = option("nearest", "How a bfloat16 GAM rounds each sum: nearest, or stochastic (unbiased "
                                          "at any stage length; noise seeded from the run seed).",
                               choices=GAM_ROUNDINGS)
    head: bool = option(True, "Mask the task head's Linear weights too (methods.md lists the head among the masked "
                              "Linears); false trains the head densely.")
    stage_steps: str = option("run", "The step count U is a share of: 'run' = the run's optimizer steps T; "
                                     "'reference' = the reference script's (run_trainer.py:357-360): one epoch's "
                                     "steps ceil(train_size / batch) when data.train_size is set (low-resource "
                                     "runs, which still train 3 epochs: U = 1 at 500 examples), else T.",
                              choices=STAGE_STEPS)
    dropout_rule: str = option("model", "'model' keeps the model's dropout (model.dropout); 'reference' applies "
                                        "the reference script's rule (run_trainer.py:345-364): dropout 0 for dps-mix, "
                                        "and for dps-dense 0, or 0.1 when the script's step count (stage_steps="
                                        "reference) is at least 2000 (full SST-2, QNLI, QQP, MNLI).",
                               choices=DROPOUT_RULES)


# ------------------------------------------------------------------------------------------ the base
class DPSMethod(MaskedMethod):
    """Stage bookkeeping for DPS; subclasses fill in `_start_stage_one`, `_start_stage_two`, `_accumulate`."""

    # ------------------------------------------------------------------------------------------ set up
    def setup(self, ctx: RunContext) -> None:
        # Which parameters are masked: the weight of every nn.Linear (optionally not the head's), by the name
        # named_parameters() gives it (a shared weight counts once).
        # nn.Linear and GPT-2's Conv1D; a causal LM's tied lm_head is the embedding table (not masked).
        self._linear_names = {n for n in projection_weights(ctx.model)
                              if ctx.groups.get(n) != "embeddings"
                              and (self.options.head or not n.startswith(ctx.head or ("\0",)))}
        super().setup(ctx)
        self.p = float(self.options.p)
        cfg = ctx.config
        steps = ctx.total_steps
        if self.options.stage_steps == "reference":
            steps = script_steps(ctx.total_steps, cfg.data.train_size, cfg.train.batch_size)
        self.U = stage_length(steps, self.options.ur)
        if self.options.dropout_rule == "reference":
            from sftune.models import set_dropout_modules

            ref_steps = script_steps(ctx.total_steps, cfg.data.train_size, cfg.train.batch_size)
            set_dropout_modules(ctx.model, self.reference_dropout(ref_steps))
        self.total_steps = int(ctx.total_steps)
        self.gam_dtype = GAM_DTYPES[self.options.gam_dtype]
        self.stage = 0  # no stage entered yet
        self._gam_generator = ctx.generator(f"{self.name}/gam")
        self._gam_seed = self._gam_generator.initial_seed()
        self.gam: dict[str, torch.Tensor] = {}
        self.stage_masks: dict[str, torch.Tensor] = {}
        self._peak: tuple[int, dict[str, int]] = (0, {})

    def candidate(self, name: str, param: torch.nn.Parameter) -> bool:
        return name in self._linear_names

    def reference_dropout(self, script_steps: int) -> float:
        """The dropout the reference script sets for this method (run_trainer.py:345-364)."""
        return 0.0

    def trained(self) -> dict[str, torch.nn.Parameter]:
        """Masked parameters that train (another plug-in may have frozen some)."""
        return {n: p for n, p in self.candidates.items() if p.requires_grad}

    def masked_numel(self) -> int:
        return sum(p.numel() for p in self.trained().values())

    # ----------------------------------------------------------------------------------------- stages
    def sync_stage(self, step: int) -> None:
        """Enter the stage of `step` if it is not the current one (idempotent; called from several hooks)."""
        stage = stage_of(step, self.U)
        if stage == self.stage:
            return
        if is_stage_two(stage):
            self._start_stage_two(stage)
        else:
            self.masks = {}  # drop the last Stage II masks now, not at the next selection: they would sit
            self._start_stage_one(stage)  # beside the new GAM (1 B per masked weight more at the peak)
        self.stage = stage
        self._note_peak()

    def in_stage_two(self) -> bool:
        return is_stage_two(self.stage)

    def _start_stage_one(self, stage: int) -> None:
        raise NotImplementedError

    def _start_stage_two(self, stage: int) -> None:
        raise NotImplementedError

    def _accumulate(self, step: int) -> None:
        raise NotImplementedError

    def _new_gam(self) -> None:
        self.gam = {n: torch.zeros(p.shape, dtype=self.gam_dtype, device=p.device) for n, p in self.trained().items()}

    def _gam_add_(self, step: int) -> bool:
        """G += g^2 from the accumulated, unscaled gradients of this step; False (nothing added) if a gradient
        is not finite, which only fp16 loss scaling produces (that step is skipped by the scaler too)."""
        names = [n for n, p in self.trained().items() if p.grad is not None and n in self.gam]
        if not names:
            return True
        grads = [self.candidates[n].grad for n in names]
        if getattr(self.ctx.config.train, "precision", "no") == "fp16":
            norms = torch.stack(torch._foreach_norm(grads))
            if not bool(torch.isfinite(norms).all()):
                return False
        if self.gam_dtype == torch.float32:
            torch._foreach_addcmul_([self.gam[n] for n in names], grads, grads)  # one fused pass
            return True
        chunk = gam_chunk(grads[0].device)
        if self.options.gam_rounding == "nearest":
            if multi_tensor_gam(grads[0].device):
                # One multi-tensor call instead of a few kernels per matrix (launches are the GPU's cost): the
                # in-place bfloat16 addcmul forms the sum in float32 and rounds it once to nearest, bitwise
                # what addcmul_bf16_ does (tested on CPU, where this mixed-dtype path is ~10x slower).
                torch._foreach_addcmul_([self.gam[n] for n in names], grads, grads)
                return True
            for n, g in zip(names, grads):
                addcmul_bf16_(self.gam[n], g, chunk)
            return True
        # Rounding noise from (run seed, step) alone: reproducible, and nothing to save for a resume.
        self._gam_generator.manual_seed((self._gam_seed * 1_000_003 + int(step)) % (1 << 63))
        chunk = min(chunk, max(g.numel() for g in grads))
        counts = [n_chunks(g.numel(), chunk) for g in grads]
        noise, offsets = sr_noise(self._gam_generator, grads[0].device, sum(counts), chunk)
        used = 0
        for n, g, k in zip(names, grads, counts):
            addcmul_bf16_(self.gam[n], g, chunk, noise, offsets[used:used + k])
            used += k
        return True

    def select(self, step: int) -> dict[str, torch.Tensor]:
        return self.stage_masks if self.in_stage_two() else {}

    # ------------------------------------------------------------------------------------------- hooks
    def before_forward(self, step: int) -> None:
        self.sync_stage(step)

    def after_backward(self, step: int) -> None:
        self.sync_stage(step)
        if not self.in_stage_two():
            self._accumulate(step)
        super().after_backward(step)

    def stats(self) -> dict[str, float]:
        n = max(1, self.masked_numel())
        return {"dps/stage": float(self.stage), "dps/cycle": float(cycle_of(self.stage)), "dps/U": float(self.U),
                "dps/state_bytes_per_weight": sum(self.state_bytes().values()) / n,
                "dps/peak_state_bytes_per_weight": self._peak[0] / n}

    # ------------------------------------------------------------------------------------------ memory
    def state_bytes(self, peak: bool = False) -> dict[str, int]:
        """Bytes of each kind of persistent method state now (or, with peak=True, at the moment their total was
        largest so far): gam, fam, mask, w0, snapshot. Divide by `masked_numel()` for bytes per masked weight.
        Optimizer state (MaskedAdamW's int16 step counts in update mode) is not included."""
        if peak:
            return dict(self._peak[1])
        out = {"gam": tensor_bytes(self.gam.values()), "fam": 0, "mask": tensor_bytes(self.stage_masks.values()),
               "w0": 0, "snapshot": 0}
        out.update(self._extra_bytes())
        return out

    def _extra_bytes(self) -> dict[str, int]:
        return {}

    def _note_peak(self) -> None:
        now = self.state_bytes()
        total = sum(now.values())
        if total >= self._peak[0]:
            self._peak = (total, now)

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (torch.load(weights_only=True)); masks bit-packed as uint8."""
        if not hasattr(self, "stage"):
            return {}
        return {"stage": int(self.stage), "U": int(self.U),
                "gam": {n: t for n, t in self.gam.items()},
                "masks": {n: pack_bits(m) for n, m in self.stage_masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if int(state["U"]) != self.U:
            raise UsageError(f"{self.name}: the checkpoint was written with stage length U={state['U']}, this run "
                             f"has U={self.U}. Resume with the same steps (--max-steps/--epochs) and method.ur.")
        params = self.candidates
        self.stage = int(state["stage"])
        self.gam = {n: t.to(device=params[n].device, dtype=self.gam_dtype) for n, t in state["gam"].items()}
        self.stage_masks = {n: unpack_bits(b.to(params[n].device), params[n].numel(), params[n].shape).clone()
                            for n, b in state["masks"].items()}
        self._note_peak()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
