"""Smoke run of every registered method's training step on one device: both mask modes, fp32 and bf16 mixed
precision, a few optimizer steps each, with checks made on the device.

    python bench/gpu/smoke.py --device cuda --json out/smoke.json            # roberta-base shape (the GPU check)
    python bench/gpu/smoke.py --device cpu --shape tiny --flat-grads on      # the CPU test's version

Each cell (method x mask mode x precision) builds the classifier from a config (random weights; one
template model, copied per cell) and trains it on synthetic batches through the training loop's own
`Trainer.build()` and `_micro_step()`, via memprofile's `ProfileTrainer` (no tokenizer, no dataset). The
method's hooks are wrapped, without changing them, to check per step:

* losses finite, and every weight finite after the last step;
* the gradient is zero outside the step's masks before the optimizer step (after `after_clip`: every method has
  masked by then; both modes zero it);
* the optimizer step changes no frozen weight, and something; in update mode it changes only selected
  entries (weights compared before/after the optimizer step against the step's masks, on the device);
* flat gradients: whether the step's gradients were views of the flat buffer before the optimizer step, against
  what `train.flat_grads` asks for on this device (from the second step: the first runs without the buffer);
* random streams: every torch.Generator the method holds, and every mask, lives on the model's device;
* DPS: which bfloat16 GAM update the device probe chose (`multi_tensor_gam`), and the probe's own answer.

Writes one JSON document (--json) and exits 1 if any cell failed a check or raised.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Config overrides on top of the roberta defaults; "roberta-base" is memprofile's built-in shape.
TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
SHAPES = ("roberta-base", "tiny")
PRECISIONS = ("fp32", "bf16")
MODES = ("grad", "update")
# Settings that make every check meaningful in a few steps: DPS reaches Stage II (U = 2 of 2*steps),
# the learning rate is the peak one from step 1 (a warmup step of lr 0 would change nothing).
SMOKE_SETS = {"train.warmup_steps": "0", "train.scheduler": "constant"}
DPS_SETS = {"method.ur": "0.25"}


def model_config(shape: str):
    from transformers import AutoConfig

    from sftune.profile.common import load_config

    if shape == "tiny":
        return AutoConfig.for_model("roberta", num_labels=2, **TINY)
    return load_config(f"shape:{shape}", "rte")


def make_trainer_class():
    from sftune.profile.memory import ProfileTrainer

    class SmokeTrainer(ProfileTrainer):
        """memprofile's trainer (synthetic batches), with the model copied from a template built once."""

        template = None

        def make_model(self):
            return copy.deepcopy(self.template)

    return SmokeTrainer


# -------------------------------------------------------------------------------------------- checks
def allowed_mask(param: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The entries a step may change, as a bool tensor (None = all): a mask given as flat indices is expanded."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask.reshape(param.shape)
    full = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
    return full.index_fill_(0, mask.reshape(-1), True).view(param.shape)


class Probe:
    """Wraps one method's after_clip/after_step (instance attributes: the class is untouched) and keeps
    per-step device-side counts; `.item()` once per count and step. after_clip, not after_backward: every
    method has masked by then (Child-Tuning masks there, after the full gradient was clipped), and clipping
    keeps zeros zero."""

    def __init__(self, trainer):
        self.method = trainer.method
        self.model = trainer.accelerator.unwrap_model(trainer.model)
        self.steps: list[dict] = []
        self._masks: dict[str, torch.Tensor | None] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._inner_clip, self._inner_step = self.method.after_clip, self.method.after_step
        self.method.after_clip, self.method.after_step = self.after_clip, self.after_step

    def after_clip(self, step: int) -> None:
        self._inner_clip(step)
        m = self.method
        fg = getattr(m, "flat_grads", None)
        row = {"step": step, "flat_used": bool(fg is not None and fg.buffer is not None and fg.holds_grads())}
        masks = m.masks or {}
        params = dict(self.model.named_parameters())
        self._masks = {n: allowed_mask(params[n], mk).clone() for n, mk in masks.items()}
        row["masked_params"] = len(self._masks)
        row["mask_devices"] = sorted({str(mk.device) for mk in self._masks.values()})
        outside = [((p.grad != 0) & ~self._masks[n]).sum() for n, p in params.items()
                   if n in self._masks and p.grad is not None]
        row["grad_outside_mask"] = total(outside)
        self._before = {n: p.detach().clone() for n, p in params.items()}
        self.steps.append(row)

    def after_step(self, step: int) -> None:
        row = self.steps[-1]
        changed, outside, frozen, selected, selected_changed = [], [], [], [], []
        for n, p in self.model.named_parameters():
            diff = p.detach() != self._before[n]
            changed.append(diff.sum())
            if not p.requires_grad:
                frozen.append(diff.sum())
                continue
            mask = self._masks.get(n)
            if mask is not None:
                outside.append((diff & ~mask).sum())
                selected.append(mask.sum())
                selected_changed.append((diff & mask).sum())
        row.update(changed=total(changed), changed_outside_mask=total(outside), frozen_changed=total(frozen),
                   selected=total(selected), selected_changed=total(selected_changed))
        self._before, self._masks = {}, {}
        self._inner_step(step)


def total(counts: list[torch.Tensor]) -> int:
    return int(torch.stack(counts).sum()) if counts else 0


def generator_devices(method) -> dict[str, str]:
    return {k: str(v.device) for k, v in vars(method).items() if isinstance(v, torch.Generator)}


def dps_probe(device: torch.device) -> dict:
    """What the bfloat16 GAM update uses on this device, and the probe's own answer (run here explicitly)."""
    from sftune.methods.dps_common import _multi_tensor_gam_agrees, multi_tensor_gam

    return {"multi_tensor_gam": bool(multi_tensor_gam(device)),
            "probe_agrees": bool(_multi_tensor_gam_agrees(device))}


def judge(cell: dict, expect_flat: bool, device: str) -> list[str]:
    """The checks a finished cell must pass; returns the failures (empty = pass)."""
    bad = []
    steps = cell["steps"]
    if len(cell["losses"]) != len(steps) or not all(math.isfinite(x) for x in cell["losses"]):
        bad.append(f"losses not finite or missing: {cell['losses']}")
    if not cell["weights_finite"]:
        bad.append("a weight is not finite after the last step")
    for s in steps:
        where = f"step {s['step']}"
        if s["grad_outside_mask"]:
            bad.append(f"{where}: {s['grad_outside_mask']} non-zero gradient entries outside the masks")
        if s["frozen_changed"]:
            bad.append(f"{where}: {s['frozen_changed']} frozen entries changed")
        if not s["changed"]:
            bad.append(f"{where}: the optimizer step changed nothing")
        if cell["mode"] == "update" and s["changed_outside_mask"]:
            bad.append(f"{where}: update mode changed {s['changed_outside_mask']} unselected entries")
        if any(d != device for d in s["mask_devices"]):
            bad.append(f"{where}: masks on {s['mask_devices']}, model on {device}")
    flat = [s["flat_used"] for s in steps[1:]]
    if flat and any(f != expect_flat for f in flat):
        bad.append(f"flat gradients used {flat} from step 2, expected {expect_flat}")
    if "dps" in cell and len(steps) >= 3 and not cell["dps"]["stage_two_steps"]:
        bad.append("DPS never reached Stage II")
    wrong = {k: d for k, d in cell["generators"].items() if d != device}
    if wrong:
        bad.append(f"generators not on {device}: {wrong}")
    return bad


# ---------------------------------------------------------------------------------------------- cells
def run_cell(trainer_cls, config, method: str, mode: str, precision: str, args) -> dict:
    from sftune.methods.flat_grads import wanted
    from sftune.profile.common import Cell, run_config, synthetic_examples
    from sftune.profile.meter import Meter

    sets = dict(SMOKE_SETS, **(DPS_SETS if method.startswith("dps") else {}), **{"train.flat_grads": args.flat_grads})
    cell = Cell(model=f"shape:{args.shape}", task="rte", method=method, batch_size=args.batch_size,
                seq_len=args.seq_len, steps=args.steps, precision=precision, mask_mode=mode, random_init=True,
                cpu=args.device == "cpu", sets=sets)
    out = {"method": method, "mode": mode, "precision": precision}
    t0 = time.perf_counter()
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state, and a later Accelerator may not ask another mixed precision:
    # each cell starts and leaves with none.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        device = torch.device(args.device)
        trainer = trainer_cls(run_config(cell), Meter(device))
        trainer.build_synthetic(cell, config, synthetic_examples(config, args.batch_size * args.steps,
                                                                 args.seq_len, seed=0))
        model_device = str(next(trainer.model.parameters()).device)
        probe = Probe(trainer)
        trainer.model.train()
        window = {"loss": 0.0, "n": 0, "examples": 0, "t": time.perf_counter()}
        losses = []
        for batch in trainer.train_loader:
            before = window["loss"]
            if trainer._micro_step(batch, window):
                trainer.state.step += 1
            losses.append(window["loss"] - before)
        finite = torch.stack([torch.isfinite(p).all() for p in trainer.model.parameters()]).all()
        m = trainer.method
        flat_capable = bool(getattr(m, "flat_capable", False) and getattr(m, "candidates", None))
        expect_flat = flat_capable and wanted(args.flat_grads, device, trainer.accelerator.num_processes)
        out.update(model_device=model_device, mixed_precision=str(trainer.accelerator.mixed_precision),
                   losses=losses, weights_finite=bool(finite), steps=probe.steps,
                   generators=generator_devices(m), flat_capable=flat_capable, expect_flat=expect_flat,
                   candidates=sum(p.numel() for p in getattr(m, "candidates", {}).values()))
        if method.startswith("dps"):
            out["dps"] = {"gam_dtype": str(m.gam_dtype), "gam_rounding": m.options.gam_rounding,
                          "stage_two_steps": [s["step"] for s in probe.steps if s["masked_params"]],
                          **dps_probe(torch.device(model_device))}
        # A model on another device than asked (no GPU found) fails every device check, as it should.
        out["failures"] = judge(out, expect_flat, str(torch.device(args.device, 0) if args.device == "cuda"
                                                      else torch.device(args.device)))
    except Exception as e:  # noqa: BLE001 - every failure is this cell's result; the others still run
        out["failures"] = [f"{type(e).__name__}: {e}"]
        out["traceback"] = traceback.format_exc(limit=-6)
    AcceleratorState._reset_state(reset_partial_state=True)
    out["ok"] = not out["failures"]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def environment(device: str) -> dict:
    import accelerate
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "device": device, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def default_methods() -> list[str]:
    """Every registered method (--methods all)."""
    from sftune.registry import methods

    return list(methods())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--shape", default="roberta-base", choices=SHAPES)
    ap.add_argument("--methods", default="all", help="comma-separated, or 'all' (every registered method)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per cell (DPS: Stage II from step 3)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (roberta-base), 4 (tiny)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 128 (roberta-base), 16 (tiny)")
    ap.add_argument("--flat-grads", default="auto", choices=("auto", "on", "off"), help="train.flat_grads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tiny = args.shape == "tiny"
    args.batch_size = args.batch_size or (4 if tiny else 8)
    args.seq_len = args.seq_len or (16 if tiny else 128)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("smoke: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    import transformers

    transformers.logging.set_verbosity_error()
    names = default_methods() if args.methods == "all" else args.methods.split(",")
    config = model_config(args.shape)
    trainer_cls = make_trainer_class()
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    trainer_cls.template = AutoModelForSequenceClassification.from_config(config)
    doc = {"env": environment(args.device), "shape": args.shape, "steps": args.steps,
           "batch_size": args.batch_size, "seq_len": args.seq_len, "flat_grads": args.flat_grads,
           "data": "synthetic batches (sftune.profile.common.synthetic_examples)", "cells": []}
    if args.device == "cuda":
        doc["dps_probe"] = dps_probe(torch.device("cuda", 0))
    # The imports' objects move out of the collector's sight: the collection after each cell (which frees its
    # trainer's reference cycles, and their device memory, before the next cell) then takes milliseconds.
    gc.freeze()
    try:
        for precision in args.precisions.split(","):
            for method in names:
                for mode in args.modes.split(","):
                    cell = run_cell(trainer_cls, config, method, mode, precision, args)
                    gc.collect()  # the cell's trainer and tensors, before the next cell allocates
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    doc["cells"].append(cell)
                    flat = "".join("F" if s["flat_used"] else "." for s in cell.get("steps", []))
                    print(f"{precision:4s} {method:15s} {mode:6s} {'ok  ' if cell['ok'] else 'FAIL'} "
                          f"flat[{flat}] {cell['seconds']:.1f}s {'; '.join(cell['failures'])[:300]}", flush=True)
    finally:
        gc.unfreeze()  # a caller in the same process (the test) gets its collector back
    failed = [f"{c['precision']}/{c['method']}/{c['mode']}" for c in doc["cells"] if not c["ok"]]
    doc.update(ok=not failed, failed=failed)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"smoke: {len(doc['cells']) - len(failed)}/{len(doc['cells'])} cells ok"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
