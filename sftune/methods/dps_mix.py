"""dps-mix: DPS with Mixout-style stages (Zhang et al., NeurIPS 2022; methods.md section 3).

    Stage I  (odd):  every step draws R ~ Bernoulli(1-p) per input column of each masked Linear; the forward uses
                     W_eff = W0 + R*(W - W0)/(1-p) (W0 = the weights training started from), W gets h*R
                     (`sftune.ops.column_mix.ColumnMix`); G += grad^2 (= h^2*R), F += R per column.
    Stage II (even): at the first step score = G / max(F, 1), times exp(-F/U) when U >= 50 (reference rule),
                     M = top-ceil((1-p) N) per matrix; G and F are freed.
        grad mode (reference):  S = W snapshot; forward W_eff = S + M*(W - S)/(1-p), W gets h*M; AdamW still
                                moves unselected W (drift); evaluation uses the raw W.
        update mode (exact):    no S. Only M entries change, so S = W off the mask and W_eff = W there; on the
                                mask W_eff moves by 1/(1-p) times W's step. sftune keeps the parameter equal to
                                W_eff itself: plain forward, and the Stage II optimizer step runs with lr/(1-p)
                                and weight decay wd*(1-p) on the masked matrices (their own param groups), so the
                                Adam step is scaled by 1/(1-p) and decay acts on W_eff at the usual rate
                                lr*wd. Evaluation (and every later stage) sees W_eff: "fold W_eff into W at each
                                Stage II end" holds at every step. The one difference from keeping S: decoupled
                                weight decay shrinks W_eff (rate lr*wd) instead of W (which would pull W_eff
                                towards -S*p/(1-p) at rate lr*wd/(1-p)).

R is drawn once per optimizer step (shared by its micro-batches, so accumulation does not change the
masks) from a generator reseeded from (run seed, step): masks depend only on the seed and the step, and a
resumed run draws the same masks without saving any generator state.

Memory per masked weight (bfloat16 GAM): Stage I W0 4 + G 2 + F 4/rows = ~6 B; Stage II grad mode S 4 + M 1
= 5 B, update mode M 1 B. W0 is needed in Stage I only: by default (method.w0_store=disk) it is written once
to an unlinked temporary file at the first Stage II start and read back, bit for bit, at each Stage I start
(`sftune.ops.parking`), so Stage II does not hold it; with w0_store=memory it stays resident (+4 B in Stage
II: 9 B in grad mode). W0 is dropped for good when no Stage I is left. Reference ~28 B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sftune.architecture import is_projection, transposed_weights
from sftune.methods.base import RunContext
from sftune.methods.dps_common import GAM_DTYPES, DPSMethod, DPSOptions, tensor_bytes, top_mask
from sftune.ops.column_mix import ColumnMix
from sftune.ops.parking import ParkedTensors
from sftune.options import option
from sftune.registry import register
from sftune.select import bernoulli_mask_

PENALTY_RULES = ("reference", "always", "never")
W0_STORES = ("disk", "memory")
PENALTY_MIN_U = 50  # the reference applies exp(-F/U) only for stages at least this long
_FOLD_KEY = "dps_mix_fold"  # marks the optimizer groups of masked matrices (update mode's scaled Stage II step)


def frequency_penalty_applies(rule: str, U: int) -> bool:
    return rule == "always" or (rule == "reference" and U >= PENALTY_MIN_U)


def mix_scores(gam: torch.Tensor, fam: torch.Tensor, U: int, penalty: bool, transposed: bool = False) -> torch.Tensor:
    """Stage II score of one matrix: G / max(F, 1) (F per input column, broadcast over rows), times exp(-F/U).
    `transposed`: the weight is stored [in, out] (GPT-2's Conv1D), so F broadcasts over columns."""
    f = fam.to(torch.float32).unsqueeze(1 if transposed else 0)
    score = gam.to(torch.float32, copy=True).div_(f.clamp(min=1.0))
    if penalty:
        score.mul_(torch.exp(-f / U))
    return score


@register
class DPSMix(DPSMethod):
    name = "dps-mix"
    summary = "DPS Mix: Mixout stages towards the pre-trained weights (accumulating gradients and column " \
              "frequencies) alternate with stages that update only the top (1-p) of each Linear weight matrix."
    details = ("Zhang et al., NeurIPS 2022 (code ZhangHaojie077/DPS, BERT only). Stages as dps-dense (U = int(T*ur), "
               "s = ceil(t/U)). Stage I: R ~ Bernoulli(1-p) per input column, W_eff = W0 + R*(W-W0)/(1-p), gradient "
               "h*R (no 1/(1-p)); G += grad^2, F += R. Stage II: score G/max(F,1), times exp(-F/U) only when U >= 50 "
               "(reference quirk, kept in both modes by default: method.freq_penalty), M = top-ceil((1-p)N) per "
               "matrix. Grad mode (reference): S = W at the stage start, W_eff = S + M*(W-S)/(1-p), gradient h*M, "
               "AdamW drift moves unselected W, evaluation uses the raw W. Update mode (exact): no S; the weight "
               "itself holds W_eff (Stage II steps use lr/(1-p) and wd*(1-p) on the masked matrices, so only M "
               "entries change and evaluation sees the weights Stage II trained with; weight decay acts on W_eff). "
               "Masked and mixed: every nn.Linear weight, head included (method.head=false: head dense, unmixed). "
               "sftune choices: R drawn once per optimizer step from (seed, step), so accumulation and resume do not "
               "change it; Stage I is Mixout in both modes (R is a dropout of the forward, not a selection); U at "
               "least 1; exact budgets, ties to the lower index; GAM bfloat16 by default, FAM int32 per column; W0 "
               "taken when the optimizer exists (after re-initialisation), parked on disk during Stage II "
               "(method.w0_store) and dropped once no Stage I is left. "
               "Reference script (--preset dps reproduces it): p 0.3, ur 0.05, lr 2e-5, bs 16, 3 epochs, warmup 10%, "
               "wd 0.01, float32 GAM, dropout 0, and in low-resource runs U from one epoch's steps (method."
               "dropout_rule, method.stage_steps); sftune's defaults keep the model's dropout, U = int(T*ur) and "
               "a bfloat16 GAM.")

    @dataclass
    class Options(DPSOptions):
        freq_penalty: str = option("reference", "Stage II frequency penalty exp(-F/U): 'reference' applies it only "
                                                "when U >= 50 (the authors' rule), 'always' or 'never'.",
                                   choices=PENALTY_RULES)
        w0_store: str = option("disk", "Where W0 waits during Stage II: 'disk' (written once to an unlinked "
                                       "temporary file in $TMPDIR, read back exactly at each Stage I start) or "
                                       "'memory' (4 B per masked weight more during Stage II).",
                               choices=W0_STORES)

    # ------------------------------------------------------------------------------------------ set up
    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.scale = 1.0 / (1.0 - self.p)
        self.penalty = frequency_penalty_applies(self.options.freq_penalty, self.U)
        gen = ctx.generator(self.name)
        self.generator = gen
        self._seed_base = gen.initial_seed()
        self.fam: dict[str, torch.Tensor] = {}
        self.w0: dict[str, torch.Tensor] = {}
        self.parked_w0 = ParkedTensors() if self.options.w0_store == "disk" else None
        self.snapshot: dict[str, torch.Tensor] = {}
        self.mix: ColumnMix | None = None
        self.param_of: dict[str, str] = {}  # Linear module name -> its (masked) weight's parameter name
        self._r: dict[str, torch.Tensor] = {}
        self._transposed = transposed_weights(ctx.model)
        self._r_step: int | None = None

    def on_optimizer(self, optimizer) -> None:
        # Here, not in setup: trainability is decided and every plug-in has set up (re-initialisation
        # included), so W0 is the weights training starts from.
        super().on_optimizer(optimizer)
        trained = self.trained()
        by_id = {id(p): n for n, p in trained.items()}
        modules = {}
        for mname, module in self.ctx.model.named_modules():
            if is_projection(module) and id(module.weight) in by_id:
                modules[mname] = module
                self.param_of[mname] = by_id[id(module.weight)]
        self.mix = ColumnMix(modules) if modules else None
        self.w0 = {n: p.detach().clone() for n, p in trained.items()}
        if self.stage and not self._stage_one_left(self.stage):
            self.w0 = {}

    def param_groups(self, groups: list[dict]) -> list[dict]:
        if self.mask_mode == "update":
            for g in groups:
                if any(n in self.candidates for n in g.get("names", ())):
                    g[_FOLD_KEY] = True  # own groups, so Stage II can scale their lr alone
        return groups

    # ----------------------------------------------------------------------------------------- stages
    def _stage_one_left(self, stage: int) -> bool:
        return stage * self.U < self.total_steps  # stage + 1 starts at step stage*U + 1

    def _start_stage_one(self, stage: int) -> None:
        self.stage_masks = {}
        self.snapshot = {}
        if self.mix is not None:
            self.mix.clear()
        if not self.w0 and self.parked_w0 is not None and self.parked_w0.parked:
            self.w0 = self.parked_w0.load()  # after S and M are freed, before the GAM exists
        self._new_gam()
        self.fam = {n: torch.zeros(self._inputs(n, p), dtype=torch.int32, device=p.device)
                    for n, p in self.trained().items()}
        self._r_step = None

    def _start_stage_two(self, stage: int) -> None:
        masks = {}
        for n in list(self.gam):  # free each G/F as soon as its mask exists
            masks[n] = top_mask(mix_scores(self.gam.pop(n), self.fam.pop(n), self.U, self.penalty,
                                           n in self._transposed), self.p)
        self.stage_masks = masks
        self.fam, self._r, self._r_step = {}, {}, None
        if self.mix is not None:
            self.mix.clear()  # Stage I's mixing references W0
        self._put_w0_away(stage)
        self._set_stage_two_mix()

    def _put_w0_away(self, stage: int) -> None:
        """Stage II does not use W0: drop it for good if no Stage I is left, else park it (w0_store=disk)."""
        if not self._stage_one_left(stage):
            self.w0 = {}  # W0 is never needed again
            if self.parked_w0 is not None:
                self.parked_w0.close()
        elif self.parked_w0 is not None and self.w0:
            self.parked_w0.park(self.w0)  # written once; later cycles only drop the resident copy
            self.w0 = {}

    def _set_stage_two_mix(self) -> None:
        """Stage II's mixing (grad mode: towards the snapshot S); the caller has cleared Stage I's."""
        if self.mix is None:
            return
        if self.mask_mode != "grad":
            return  # update mode: the weight is W_eff itself, plain forward
        self.snapshot = {n: self.candidates[n].detach().clone() for n in self.stage_masks}
        for mname, pname in self.param_of.items():
            if pname in self.stage_masks:
                self.mix.set(mname, self.snapshot[pname], self.stage_masks[pname], self.scale)

    def _draw(self, step: int) -> None:
        """This step's column masks R, from a generator seeded by (run seed, step), and the Stage I mixing."""
        trained = self.trained()
        if not trained:
            return
        sizes = [self._inputs(n, p) for n, p in trained.items()]
        device = next(iter(trained.values())).device
        self.generator.manual_seed((self._seed_base * 1_000_003 + int(step)) % (1 << 63))
        r = torch.empty(sum(sizes), dtype=torch.bool, device=device)
        bernoulli_mask_(r, 1.0 - self.p, self.generator)
        self._r = dict(zip(trained, r.split(sizes)))
        self._r_step = step
        if self.mix is not None:
            for mname, pname in self.param_of.items():
                self.mix.set(mname, self.w0[pname], self._r[pname], self.scale)
        self._note_peak()

    def _inputs(self, name: str, param: torch.Tensor) -> int:
        """Input columns of a masked matrix: [out, in] for nn.Linear, [in, out] for GPT-2's Conv1D."""
        return param.shape[0] if name in self._transposed else param.shape[1]

    def _accumulate(self, step: int) -> None:
        if self._gam_add_(step):
            for n, f in self.fam.items():
                f.add_(self._r[n])

    # ------------------------------------------------------------------------------------------- hooks
    def before_forward(self, step: int) -> None:
        self.sync_stage(step)
        if not self.in_stage_two() and self._r_step != step:
            self._draw(step)

    def after_backward(self, step: int) -> None:
        self.sync_stage(step)
        if not self.in_stage_two():
            if self._r_step != step:
                self._draw(step)  # the R that _accumulate adds to F (DPSMethod.after_backward calls it)
        elif self.mask_mode == "grad":
            # The gradient is already h*M (ColumnMix's backward): record the masks for the counts only.
            self.masks = self.stage_masks
            return
        super().after_backward(step)  # Stage I: G and F accumulate; then the masking of every masked method

    def optimizer_step(self, optimizer) -> bool:
        if self.mask_mode != "update" or not self.in_stage_two():
            return False
        groups = [g for g in optimizer.param_groups if g.get(_FOLD_KEY)]
        saved = [(g["lr"], g["weight_decay"]) for g in groups]
        for g in groups:  # Adam step x 1/(1-p), decay rate lr*wd unchanged (up to rounding)
            g["lr"], g["weight_decay"] = g["lr"] * self.scale, g["weight_decay"] / self.scale
        try:
            optimizer.step()
        finally:
            for g, (lr, wd) in zip(groups, saved):
                g["lr"], g["weight_decay"] = lr, wd
        return True

    def stats(self) -> dict[str, float]:
        out = super().stats()
        if self._r and not self.in_stage_two():
            kept = sum(int(r.sum()) for r in self._r.values())
            out["dps/kept_columns"] = kept / max(1, sum(r.numel() for r in self._r.values()))
        return out

    # ------------------------------------------------------------------------------------------ memory
    def _extra_bytes(self) -> dict[str, int]:
        return {"fam": tensor_bytes(self.fam.values()), "w0": tensor_bytes(self.w0.values()),
                "snapshot": tensor_bytes(self.snapshot.values()),
                "mask": tensor_bytes(self.stage_masks.values()) + tensor_bytes(self._r.values())}

    # ------------------------------------------------------------------------------------- checkpoints
    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int]:
        """The larger stage: Stage I holds W0, the GAM, FAM (int32) and R (bool) per column; Stage II the bool
        masks, the grad-mode snapshot and W0 when it stays in memory (w0_store=memory)."""
        trained = self.trained()
        n = self.masked_numel()
        gam = n * torch.empty(0, dtype=GAM_DTYPES[self.options.gam_dtype]).element_size()
        w0 = tensor_bytes(trained.values())
        cols = sum(p.shape[1] for p in trained.values() if p.dim() == 2)
        stage_one = {"w0": w0, "gam": gam, "fam": 4 * cols, "mask": cols}
        stage_two = {"mask": n, **({"snapshot": w0} if mask_mode == "grad" else {})}
        if self.options.w0_store == "memory":
            stage_two["w0"] = w0
        return stage_one if sum(stage_one.values()) >= sum(stage_two.values()) else stage_two

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state:
            state["fam"] = dict(self.fam)
            state["snapshot"] = dict(self.snapshot)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        super().load_state_dict(state)
        params = self.candidates
        self.fam = {n: t.to(device=params[n].device, dtype=torch.int32) for n, t in state["fam"].items()}
        self._r, self._r_step = {}, None  # R of any step is redrawn from (seed, step)
        if self.mix is not None:
            self.mix.clear()
        if self.in_stage_two():
            self._put_w0_away(self.stage)
            if self.mask_mode == "grad" and self.mix is not None:
                self.snapshot = {n: t.to(device=params[n].device, dtype=params[n].dtype)
                                 for n, t in state["snapshot"].items()}
                for mname, pname in self.param_of.items():
                    if pname in self.stage_masks:
                        self.mix.set(mname, self.snapshot[pname], self.stage_masks[pname], self.scale)
        self._note_peak()
