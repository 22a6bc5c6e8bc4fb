"""Measured memory and step time of one (method, batch size) cell, each in its own child process.

Cells run one after the other, each in a process forked from a fork server that has already imported
torch, transformers and sftune (`server.py`: a cell starts in a second, not ten) and that never ran a kernel
or touched an accelerator. A cell that dies (the kernel's out-of-memory killer, a CUDA out-of-memory error,
any exception) is reported with its cause; the other cells go on.

In the child, in order:

1. Imports the build would do lazily; on CPU glibc is told to serve every allocation of 16 KiB or more from
   its own mapping (`fix_mmap_threshold`: freed tensors go back to the OS, so the resident peak is what was
   live, not what the allocator kept); one training step of a one-layer copy of the architecture (thread
   pools, kernel caches). Then the baseline: resident memory (VmRSS; the high-water mark VmHWM is reset to it
   through /proc/self/clear_refs), or allocated memory after `torch.cuda.reset_peak_memory_stats()` (`Meter`,
   `meter.py`).
2. `Trainer.build()` itself, fed synthetic examples and a config-built or loaded model (`ProfileTrainer`),
   then `steps` optimizer steps through `Trainer._micro_step`, with `trainer.phases` a `ProfileTimer`
   (`tracking.py`): the PhaseTimer split, plus the tensors the step holds, event by event.
3. Peak = high-water mark - baseline over the whole cell up to here, setup included (CPU: VmHWM, or
   ru_maxrss where /proc cannot reset it; CUDA: max_memory_allocated, with max_memory_reserved beside it).
4. Time: `steps` more optimizer steps with a plain PhaseTimer, the tracking's hooks removed and (CPU) glibc's
   mmap threshold back at its dynamic maximum, so the step times are those of `sftune train`.

The breakdown is the parts at the moment their sum was largest, all measured (bytes = storage sizes, each
storage once): weights (parameters and buffers), gradients (as backward creates them), optimizer state
(sampled at each step's start and end), method state (every tensor reachable from the method object that is
not a parameter, gradient or optimizer state; `state_bytes()` is reported beside it as `declared`),
activations (tensors autograd saved for backward, released as backward frees them), runtime (process memory
at the start of the step beyond those tensors: Python objects, kernel caches, allocator state). `other` =
peak - parts is derived: backward and selection temporaries, allocator slack; it may be negative.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import types
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable

import torch

from sftune.engine.loop import Trainer
from sftune.engine.timing import PhaseTimer
from sftune.profile.common import TIME_PHASES, Cell, build_model, failure, load_config, run_config, synthetic_examples
from sftune.profile.meter import RUN_MMAP_THRESHOLD, Meter, fix_mmap_threshold, rss_bytes
from sftune.profile.tracking import ProfileTimer, storages

FAIL_ENV = "SFTUNE_MEMPROFILE_FAIL"  # testing hook: "METHOD" or "METHOD@BATCH" makes that cell's child raise
MALLOC_ENV = "SFTUNE_MEMPROFILE_MALLOC"  # "default" keeps glibc's own mmap threshold (to compare; see above)


def preload(config) -> None:
    """Import, before the baseline, what building and training import lazily (tens of MB of code and data)."""
    import accelerate  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    import sftune.engine.optim  # noqa: F401
    import sftune.optim  # noqa: F401
    from sftune.registry import methods

    methods()
    try:
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        pass


def warm_up(config, seq_len: int) -> None:
    """One training step of a one-layer, small-vocabulary copy of the architecture on one short batch: the
    thread pools, kernel caches and autograd threads a step sets up exist before the baseline."""
    import copy

    from transformers import AutoModelForSequenceClassification

    small = copy.deepcopy(config)
    for key in ("num_hidden_layers", "encoder_layers", "decoder_layers", "num_layers"):
        if isinstance(getattr(small, key, None), int):
            setattr(small, key, 1)
    small.vocab_size = min(int(config.vocab_size), 512)
    try:
        model = AutoModelForSequenceClassification.from_config(small)
    except Exception:  # noqa: BLE001 - the warm-up is best effort
        return
    model.train()
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    example = synthetic_examples(small, 2, seq_len, 0)
    batch = {k: torch.stack([e[k] for e in example]) for k in example[0]}
    try:
        model(**batch).loss.backward()
        opt.step()
    except Exception:  # noqa: BLE001
        pass
    del model, opt, batch


class ProfileTrainer(Trainer):
    """The training loop's own `build()` and `_micro_step()`, fed synthetic examples and a config-built or
    loaded model instead of a tokenizer, a dataset and a checkpoint (no evaluation sets)."""

    def __init__(self, cfg, meter: Meter):
        super().__init__(cfg)
        self.memory_meter = meter  # (Trainer.meter is the sparsity meter)

    def build_synthetic(self, cell: Cell, config, examples: list[dict]) -> None:
        self._synthetic = (cell, config, examples)
        self.build(need_train=True)
        self._param_storages = storages([*self.model.parameters(), *self.model.buffers()])

    # Trainer.build's inputs, replaced: synthetic examples in order, the cell's model, no tokenizer.
    def make_tokenizer(self):
        return None

    def read_data(self, need_train: bool):
        return SimpleNamespace(train=self._synthetic[2], evals={})

    def encode(self, dataset):
        return dataset

    def loader(self, dataset, batch_size: int, shuffle_seed: int | None = None):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size)  # in order; default collate

    def make_model(self):
        cell, config, _ = self._synthetic
        return build_model(cell, config)

    def param_storages(self) -> set[int]:
        grads = storages(p.grad for p in self.model.parameters() if p.grad is not None)
        return set(self._param_storages) | set(grads)

    def weight_bytes(self) -> int:
        return sum(self._param_storages.values())

    def process_bytes(self) -> int:
        """Memory of the process now, above the baseline (resident on CPU, allocated on CUDA)."""
        meter = self.memory_meter
        if meter.cuda:
            return torch.cuda.memory_allocated(meter.device) - meter.baseline
        return rss_bytes() - meter.baseline


# ---------------------------------------------------------------------------------------------- a cell
def _injected(cell: Cell, spec: str) -> None:
    for item in filter(None, (s.strip() for s in spec.split(","))):
        method, _, batch = item.partition("@")
        if method == cell.method and (not batch or int(batch) == cell.batch_size):
            raise RuntimeError(f"injected failure ({FAIL_ENV}={spec})")


def run_cell(cell: Cell, inject: str = "", malloc: str = "mmap") -> dict[str, Any]:
    """Measure one cell in this process (call it in a fresh child: the peak is the process's). `inject` and
    `malloc` are the values of FAIL_ENV and MALLOC_ENV."""
    cuda = torch.cuda.is_available() and not cell.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    cfg = run_config(cell)
    config = load_config(cell.model, cell.task, cfg.model.dropout)
    examples = synthetic_examples(config, cell.batch_size * 2 * cell.steps, cell.seq_len, cell.seed)
    preload(config)
    if not cuda:
        if malloc != "default":
            fix_mmap_threshold()
        warm_up(config, cell.seq_len)
    meter = Meter(device)
    meter.start()
    _injected(cell, inject)
    trainer = ProfileTrainer(cfg, meter)
    trainer.build_synthetic(cell, config, examples)
    timer = trainer.phases = ProfileTimer(device, trainer)
    trainer.model.train()
    window = {"loss": 0.0, "n": 0, "examples": 0, "t": time.perf_counter()}
    batches = iter(trainer.train_loader)  # batch_size x 2*steps examples, in order (grad_accum = 1)

    def run_steps(n: int) -> None:
        for _ in range(n):
            if trainer._micro_step(next(batches), window):
                trainer.state.step += 1

    t0 = time.perf_counter()
    run_steps(cell.steps)  # memory: tracked steps, peak and breakdown
    peak = meter.peak()
    parts = timer.breakdown()
    # Time: as many steps again, as `sftune train` runs them. The tracking's hooks are removed (they run Python
    # per saved tensor and walk the method's state inside the forward phase) and on CPU glibc's threshold goes
    # back up to its dynamic maximum, so temporaries come from the heap again instead of fresh zeroed pages.
    timer.close()
    if not cuda and malloc != "default":
        fix_mmap_threshold(RUN_MMAP_THRESHOLD, trim=2 * RUN_MMAP_THRESHOLD)
    clock = trainer.phases = PhaseTimer(device)
    run_steps(cell.steps)
    seconds = time.perf_counter() - t0
    declared = trainer.method.state_bytes(peak=True)
    if declared is not None:
        declared = {k: int(v) for k, v in declared.items()}
    medians = clock.medians(skip=1)
    times = {p: medians.get(p, 0.0) for p in TIME_PHASES}
    times["total"] = sum(times.values())
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    masked = sum(p.numel() for p in trainer.method.candidates.values() if p.requires_grad)
    return {
        "status": "ok",
        "device": _device_name(device),
        "peak_bytes": int(peak["peak"]),
        "peak_source": peak["source"],
        "baseline_bytes": int(peak["baseline"]),
        **({"peak_reserved_bytes": int(peak["peak_reserved"])} if "peak_reserved" in peak else {}),
        "parts": {k: int(v) for k, v in parts["at_peak"].items()},
        "parts_max": {k: int(v) for k, v in parts["max"].items()},
        "process_at_tracked_peak": int(timer.process_at_peak),
        "method_state_detail": dict(timer.method_detail),
        "declared_state_bytes": declared,
        "time": times,
        "steps": cell.steps,  # tracked steps; as many timed steps followed them
        "timed_steps": len(clock.seconds.get("forward", ())),
        "wall_seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": trainable,
        "candidates": masked,
        "loss": window["loss"] / max(window["n"], 1),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _child(cell_dict: dict, conn, knobs: dict[str, str]) -> None:
    """Child process entry: run the cell, send one dict back."""
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        result = run_cell(Cell(**cell_dict), **knobs)
    except BaseException as e:  # noqa: BLE001 - every failure is reported as the cell's result
        result = failure(e)
        result["traceback"] = traceback.format_exc(limit=-4)
    try:
        conn.send(result)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ the parent
def measure(cells: list[Cell], timeout: float | None = None,
            on_result: Callable[[Cell, dict], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell in its own child process, one after the other; failures become results."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["sftune.profile.server"])
    results = []
    for cell in cells:
        result = _run_child(ctx, cell, timeout)
        result = {"method": cell.method, "batch_size": cell.batch_size, **result}
        results.append(result)
        if on_result:
            on_result(cell, result)
    return results


@contextmanager
def _bare_main():
    """multiprocessing re-imports the parent's __main__ in every child (the `sftune` script, pytest, or
    nothing it can find when the parent reads stdin); the cells need none of it: hide it while starting one."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _run_child(ctx, cell: Cell, timeout: float | None) -> dict[str, Any]:
    recv, send = ctx.Pipe(duplex=False)
    # The knobs are read here: children inherit the fork server's environment, not this process's.
    knobs = {"inject": os.environ.get(FAIL_ENV, ""), "malloc": os.environ.get(MALLOC_ENV, "mmap")}
    proc = ctx.Process(target=_child, args=(cell.to_dict(), send, knobs), daemon=True)
    with _bare_main():
        proc.start()
    send.close()
    result = None
    try:
        if recv.poll(timeout):  # a result, or end of file when the child died
            try:
                result = recv.recv()
            except EOFError:
                pass
        else:
            proc.kill()
            proc.join()
            return {"status": "timeout", "error": f"no result within {timeout:g} s"}
    finally:
        recv.close()
    proc.join()
    if result is not None:
        return result
    code = proc.exitcode
    if code is not None and code < 0:
        import signal

        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        if -code == signal.SIGKILL:
            return {"status": "oom", "error": f"child killed by {name} (most likely the kernel's out-of-memory "
                                              "killer)"}
        return {"status": "error", "error": f"child killed by {name}"}
    return {"status": "error", "error": f"child exited with status {code} without a result"}


if __name__ == "__main__":  # pragma: no cover - manual use: python -m sftune.profile.memory '<cell json>'
    import json

    print(json.dumps(run_cell(Cell(**json.loads(sys.argv[1])), os.environ.get(FAIL_ENV, ""),
                              os.environ.get(MALLOC_ENV, "mmap")), indent=2))
