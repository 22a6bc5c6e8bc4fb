"""Step time of each method against full fine-tuning, measured in pairs so that machine drift cancels.

    python bench/step_time.py --shape roberta-base --batch-size 16 --steps 6 --json docs/bench/step_time-cpu-bs16.json

`bench/step_share.py` and `sftune memprofile` time one method after the other; on a shared or virtual
machine the speed drifts by 10-20% between runs minutes apart, more than the 5% the targets are about.
Here one `full` trainer and one trainer of the method live in the same process and take their optimizer
steps alternately (full, method, method, full, ...), so both see the same machine. Both are the training
loop `sftune train` runs (`Trainer._micro_step`) with the loop's own phase timer, on the real RTE files,
a model of the given shape with random weights (built from a config; the shape is what costs time).

Reported per method: medians per phase over the steps after the first, the ratio of the step without
the plug-ins' forward hooks (DPS stage starts, which a real run pays once per stage of U steps) to full's
step, and the selection-and-masking share of full's step.

Two trainers are still two sets of tensors in different memory, and on a virtual machine their forward
passes can differ by 10-15% with identical code. `--forward-ab` measures what a method adds to the
forward and backward passes on ONE model instead: the input-mean hooks of top/stochastic, DPS Mix's column
mixing in Stage I and Stage II. It times forward + backward of the same batch with the method's addition
on and off, alternating, and an on/on control that shows the noise floor of the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from step_share import SHAPES, build_model_dir, train_tree  # noqa: E402


def default_methods() -> list[str]:
    """Every registered method but full (each is timed against full)."""
    from sftune.registry import method_names

    return [m for m in method_names() if m != "full"]


STEP_PHASES = ("forward", "extra_loss", "backward", "selection", "optimizer")  # the step without "hooks"


def make_trainer(model_dir: Path, glue: Path, method: str, mode: str, steps: int, batch_size: int, device: str):
    from sftune.config import build
    from sftune.engine.loop import Trainer
    from sftune.engine.timing import PhaseTimer

    tree = train_tree(model_dir, glue, method, mode, steps, batch_size, device)
    trainer = Trainer(build(tree))
    trainer.build()
    trainer.phases = PhaseTimer(trainer.accelerator.device)
    trainer.model.train()
    trainer._batches = iter(trainer.train_loader)
    trainer._window = {"loss": 0.0, "n": 0, "examples": 0, "t": 0.0}
    return trainer


def one_step(trainer) -> None:
    while not trainer._micro_step(next(trainer._batches), trainer._window):
        pass
    trainer.state.step += 1


def step_seconds(medians: dict[str, float]) -> float:
    return sum(medians.get(p, 0.0) for p in STEP_PHASES)


def paired(full, other, steps: int) -> tuple[dict, dict]:
    for i in range(steps):
        order = (full, other) if i % 2 == 0 else (other, full)  # ABBA: neither always goes first
        for trainer in order:
            one_step(trainer)
    return full.phases.medians(skip=1), other.phases.medians(skip=1)


def _fwd_bwd_seconds(trainer, batch) -> float:
    import time

    t0 = time.perf_counter()
    trainer.model(**batch).loss.backward()
    seconds = time.perf_counter() - t0
    trainer.optimizer.zero_grad(set_to_none=True)
    return seconds


def _toggle(trainer):
    """(on, off) callables that switch the method's forward/backward addition on and off."""
    from sftune.methods.importance import InputMeans

    m = trainer.method
    if hasattr(m, "means"):
        hooks = m.means  # re-registered alike: same modules, same signed/unsigned mean

        def on():
            if m.means is None:
                m.means = InputMeans(trainer.model, hooks.module_names, signed=hooks.signed)

        def off():
            if m.means is not None:
                m.means.remove()
                m.means = None
        return on, off
    if getattr(m, "mix", None) is not None:
        saved = dict(m.mix.state)
        return (lambda: m.mix.state.update(saved)), m.mix.state.clear
    raise SystemExit(f"{m.name}: nothing in its forward or backward to switch")


def forward_ab(model_dir: Path, glue: Path, method: str, batch_size: int, reps: int, device: str) -> list[dict]:
    """Forward + backward with the method's addition on vs off on one model, alternating (ABBA), plus on/on."""
    import statistics

    rows = []
    steps = 8
    trainer = make_trainer(model_dir, glue, method, "grad", steps, batch_size, device)
    stages = [("", 1)] if not method.startswith("dps") else [("stage I", 1), ("stage II", 2)]
    for label, stage_steps in stages:
        while trainer.state.step < stage_steps:
            one_step(trainer)
        if method.startswith("dps"):
            trainer.method.before_forward(trainer.state.step + 1)  # this stage's mixing, as the next step sees it
        batch = {k: v for k, v in next(trainer._batches).items() if k != "idx"}
        on, off = _toggle(trainer)
        times = {"on": [], "off": [], "control": []}
        _fwd_bwd_seconds(trainer, batch)  # warm
        for i in range(reps):
            plan = [("on", on), ("off", off)] if i % 2 == 0 else [("off", off), ("on", on)]
            plan.append(("control", on))
            for key, switch in plan:
                switch()
                times[key].append(_fwd_bwd_seconds(trainer, batch))
        on()
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"method": method, "stage": label, "fwd_bwd_on": med["on"], "fwd_bwd_off": med["off"],
                     "control_on": med["control"], "added": med["on"] / med["off"] - 1.0,
                     "control_spread": med["control"] / med["on"] - 1.0, "reps": reps})
        print(f"{method:15s} {label:9s} fwd+bwd with/without its addition {med['on'] / med['off']:.3f} "
              f"(control on/on {med['control'] / med['on']:.3f})", flush=True)
    return rows


def write_json(doc: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="roberta-base", choices=SHAPES)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="steps per trainer (the first is left out)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method but full)")
    ap.add_argument("--mode", default="grad")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--forward-ab", action="store_true", help="only the forward/backward additions (one model)")
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    glue = Path(args.glue)
    rows = []
    methods = args.methods.split(",") if args.methods else default_methods()
    if args.forward_ab:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_model_dir(args.shape, glue, Path(tmp) / "model")
            for method in methods:
                rows += forward_ab(model_dir, glue, method, args.batch_size, args.reps, args.device)
        doc = {"shape": args.shape, "batch_size": args.batch_size, "seq_len": 128, "device": args.device,
               "torch_threads": torch.get_num_threads(),
               "design": "one model; forward+backward of one batch with the addition on/off alternating (ABBA); "
                         "medians; control = on again after each pair", "rows": rows}
        write_json(doc, args.json)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(args.shape, glue, Path(tmp) / "model")
        for method in methods:
            # A fresh full trainer per method: every pair runs the same number of steps from the same start.
            full = make_trainer(model_dir, glue, "full", args.mode, args.steps, args.batch_size, args.device)
            other = make_trainer(model_dir, glue, method, args.mode, args.steps, args.batch_size, args.device)
            f, m = paired(full, other, args.steps)
            del full, other
            base = step_seconds(f)
            row = {"method": method, "full": f, "phases": m, "full_step": base, "step": step_seconds(m),
                   "step_ratio": step_seconds(m) / base, "hooks": m.get("hooks", 0.0),
                   "selection_share": m.get("selection", 0.0) / base}
            rows.append(row)
            print(f"{method:15s} step/full {row['step_ratio']:.3f}  selection {100 * row['selection_share']:.2f}% "
                  f"of full  (full {base:.3f}s, hooks {row['hooks']:.3f}s)", flush=True)
    doc = {"shape": args.shape, "batch_size": args.batch_size, "seq_len": 128, "mode": args.mode,
           "device": args.device, "steps": args.steps, "torch_threads": torch.get_num_threads(),
           "design": "full and method trainers alternate steps (ABBA) in one process; medians after step 1",
           "rows": rows}
    write_json(doc, args.json)


if __name__ == "__main__":
    main()
