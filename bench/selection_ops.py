"""Operator counts of each method's selection phase: a proxy, measurable without a GPU, for its GPU cost.

    python bench/selection_ops.py --shape roberta-base --json docs/bench/selection_ops-roberta-base.json

On a GPU the selection phase of a sampled method moves well under a gigabyte (a few hundred microseconds
of H100 bandwidth), yet measured 4-46 ms: its time is the host's, one eager dispatch and kernel launch
per operator (~10-20 us each), and a device synchronisation at every host read. This script counts, in
the selection phase of a few training steps, the operators dispatched (excluding views, which launch
nothing; a multi-tensor `_foreach_` call counts as the launches it makes on CUDA) and the host reads of device
values (`item`/`tolist`/`bool`). Those counts do not depend on
the machine, so a change that lowers them can be checked here, and the counts say what a GPU would pay.

The CPU-only paths (the Bernoulli draw's cache-sized chunks and two generator streams, DPS's chunked GAM update,
the weighted sampler's draw chunks) are switched to their non-CPU form while counting, and `train.flat_grads` is
`on` (what `auto` picks on CUDA; `--flat-grads off` for the per-parameter path), so the counts are those of a CUDA
run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from step_share import SHAPES, build_model_dir, train_tree  # noqa: E402
from step_time import write_json  # noqa: E402


def default_methods() -> list[str]:
    """Every registered method that selects entries every step."""
    from sftune.registry import method_names

    return method_names(selecting=True)


def _foreach_launches(args) -> int:
    """Kernel launches of one multi-tensor (`_foreach_`) call on CUDA: one per tensor when the lists differ
    in shape or dtype (the per-tensor fallback), else one per 320 blocks of 65536 entries (multi_tensor_apply)."""
    import torch

    first = args[0]
    other = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else None
    if other is not None and any(isinstance(b, torch.Tensor) and (a.shape != b.shape or a.dtype != b.dtype)
                                 for a, b in zip(first, other)):
        return len(first)
    blocks = sum(-(-t.numel() // 65536) for t in first)
    return max(1, -(-blocks // 320))


class OpCounter:
    """Counts non-view aten operators and host reads while `active`."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.ops: Counter = Counter()
        self.syncs = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket.__name__)
                if func is torch.ops.aten._local_scalar_dense.default:
                    counter.syncs += 1  # item(), int(), float(), bool() of a tensor: a device sync on a GPU
                elif name.startswith("_foreach_"):
                    counter.ops[name] += _foreach_launches(args)
                elif not func.is_view:
                    counter.ops[name] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode
        original = torch.Tensor.tolist

        def tolist(t):  # a host copy; on CPU it dispatches no operator, so count it here
            if counter.active:
                counter.syncs += 1
            return original(t)

        torch.Tensor.tolist = tolist
        self.active = False

    @contextmanager
    def count(self):
        self.active = True
        try:
            with self.mode():
                yield
        finally:
            self.active = False


def run(model_dir: Path, glue: Path, method: str, mode: str, steps: int, counter: OpCounter, flat: str) -> dict:
    from sftune.config import build
    from sftune.engine.loop import Trainer
    from sftune.engine.timing import NullTimer

    class Timer(NullTimer):
        def __init__(self):
            self.step = 0
            self.per_step: list[tuple[int, int]] = []

        @contextmanager
        def __call__(self, phase):
            if phase != "selection" or self.step == 0:  # the first step allocates: not counted
                yield
                return
            with counter.count():
                yield

        def end_step(self):
            if self.step:
                self.per_step.append((sum(counter.ops.values()), counter.syncs))
            counter.ops.clear()
            counter.syncs = 0
            self.step += 1

    tree = train_tree(model_dir, glue, method, mode, steps, 2, "cpu")
    tree["train"]["flat_grads"] = flat
    trainer = Trainer(build(tree))
    trainer.build()
    trainer.phases = timer = Timer()
    trainer.eval_loaders = {}
    trainer._evaluate_and_record = lambda final=False: {}
    trainer.train()
    ops = sorted(o for o, _ in timer.per_step)
    syncs = sorted(s for _, s in timer.per_step)
    return {"ops_per_step": timer.per_step, "median_ops": ops[len(ops) // 2], "median_syncs": syncs[len(syncs) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="roberta-base", choices=SHAPES)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every per-step selector)")
    ap.add_argument("--modes", default="grad,update")
    ap.add_argument("--flat-grads", default="on", choices=("on", "off"))
    ap.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import transformers

    from sftune.methods import dps_common
    from sftune.select import masks, sampling_cdf

    transformers.logging.set_verbosity_error()
    masks._CHUNK.clear()  # the non-CPU Bernoulli path: few large chunks, one stream
    masks._SPLIT_MIN = float("inf")
    dps_common.gam_chunk = lambda device: 1 << 23  # a whole matrix per chunk, as on CUDA
    dps_common.multi_tensor_gam = lambda device: True
    sampling_cdf._DRAW_CHUNK = sampling_cdf._DRAW_CHUNK_OTHER
    counter = OpCounter()
    glue = Path(args.glue)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(args.shape, glue, Path(tmp) / "model")
        for method in args.methods.split(",") if args.methods else default_methods():
            for mode in args.modes.split(","):
                r = run(model_dir, glue, method, mode, args.steps, counter, args.flat_grads)
                rows.append({"method": method, "mode": mode, **r})
                print(f"{method:15s} {mode:6s} launches/step {r['median_ops']:6d}  "
                      f"host reads/step {r['median_syncs']:4d}  (per step: {r['ops_per_step']})", flush=True)
    write_json({"shape": args.shape, "steps": args.steps, "flat_grads": args.flat_grads, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
