"""Following the tensors of a training step: which storages the model, the optimizer and the method hold,
what autograd saves for backward and when it frees it, and when gradients appear (`ProfileTimer`)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from sftune.engine.timing import PhaseTimer


def storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    if t.device.type == "meta":
        return None
    st = t.untyped_storage()
    return (st.data_ptr(), st.nbytes()) if st.nbytes() else None


def storages(tensors) -> dict[int, int]:
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = storage_key(t)
            if key:
                out[key[0]] = key[1]
    return out


_SKIP_TYPES: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer, torch.Generator)


def reachable_tensors(root: Any, max_depth: int = 6) -> dict[str, dict[int, int]]:
    """Storages (ptr -> bytes) of the tensors reachable from `root`'s attributes, per attribute: through
    dicts, lists, tuples, sets and sftune objects; not through modules, optimizers or the run context."""
    from sftune.methods.base import RunContext

    seen: set[int] = set()

    def visit(obj: Any, depth: int, acc: dict[int, int]) -> None:
        if depth > max_depth or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            key = storage_key(obj)
            if key:
                acc[key[0]] = key[1]
            return
        if isinstance(obj, (*_SKIP_TYPES, RunContext)) or callable(getattr(obj, "__next__", None)):
            return
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v, depth + 1, acc)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for v in obj:
                visit(v, depth + 1, acc)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("sftune."):
            for v in vars(obj).values():
                visit(v, depth + 1, acc)

    out = {}
    for name, value in vars(root).items():
        acc: dict[int, int] = {}
        visit(value, 1, acc)
        if acc:
            out[name] = acc
    return out


class _Saved:
    """What the pack hook stores for autograd: the tensor, and a release of its bytes when autograd drops it."""

    __slots__ = ("tensor", "tracker", "key")

    def __init__(self, tensor: torch.Tensor, tracker: "ProfileTimer", key: int | None):
        self.tensor, self.tracker, self.key = tensor, tracker, key

    def __del__(self):
        if self.key is not None:
            self.tracker._release(self.key)


class ProfileTimer(PhaseTimer):
    """PhaseTimer that also follows the tensors a step holds, event by event: activations as autograd saves
    and frees them, gradients as backward creates them, optimizer and method state sampled at the start of
    the forward pass, after backward and after the optimizer step. At every event the sum of the parts is
    compared with the largest seen so far; the parts at that moment are the breakdown (`at_peak`), and each
    part's own maximum over the steps is kept too (`max`)."""

    def __init__(self, device, trainer: Any):  # a sftune.profile.memory.ProfileTrainer
        super().__init__(device)
        self.trainer = trainer
        self.weights = trainer.weight_bytes()
        self.live = {"gradients": 0, "optimizer": 0, "method_state": 0, "activations": 0, "runtime": 0}
        self.max = dict(self.live)
        self.at_peak = {"weights": self.weights, **self.live}
        self.process_at_peak = 0
        self.method_detail: dict[str, int] = {}
        self._saved: dict[int, list[int]] = {}  # storage ptr -> [bytes, holders]
        self._exclude: set[int] = set()
        self._grads: set[int] = set()  # ids of parameters whose gradient exists
        self._step_open = False
        self._after_backward = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_ready)
                       for p in trainer.model.parameters() if p.requires_grad]
        # Built, no step taken: the runtime part until the first step samples it again.
        self._sample_optimizer()
        self._sample_method()
        held = self.weights + self.live["optimizer"] + self.live["method_state"]
        self.live["runtime"] = max(0, trainer.process_bytes() - held)

    # ----------------------------------------------------------------------------------------- events
    def _note(self) -> None:
        for key, value in self.live.items():
            if value > self.max[key]:
                self.max[key] = value
        total = self.weights + sum(self.live.values())
        if total > sum(self.at_peak.values()):
            self.at_peak = {"weights": self.weights, **self.live}
            self.process_at_peak = self.trainer.process_bytes()

    def _open_step(self) -> None:
        """First saved tensor of a step (after the plug-ins' before_forward): sample the persistent state."""
        self._step_open = True
        self._sample_optimizer()
        method = self._sample_method()
        self._exclude = self.trainer.param_storages() | set(method) | self._optimizer_storages
        # What the process holds beyond the tracked tensors at the start of this step: Python objects, kernel
        # caches and allocator state, which grow over the first steps (between steps no activation or
        # gradient exists, so this is process memory - the persistent parts).
        held = self.weights + self.live["optimizer"] + self.live["method_state"]
        self.live["runtime"] = max(0, self.trainer.process_bytes() - held)

    def _pack(self, t: torch.Tensor):
        if not self._step_open:
            self._open_step()
        key = storage_key(t)
        if key is None or key[0] in self._exclude:
            return _Saved(t, self, None)
        entry = self._saved.get(key[0])
        if entry is None:
            self._saved[key[0]] = [key[1], 1]
            self.live["activations"] += key[1]
            self._note()
        else:
            entry[1] += 1
        return _Saved(t, self, key[0])

    def _release(self, ptr: int) -> None:
        entry = self._saved.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._saved[ptr]
            self.live["activations"] -= entry[0]

    def _grad_ready(self, p: torch.Tensor) -> None:
        if id(p) not in self._grads and p.grad is not None:
            self._grads.add(id(p))
            self.live["gradients"] += p.grad.numel() * p.grad.element_size()
            self._note()

    def _sample_optimizer(self) -> None:
        tr = self.trainer
        opt = tr.optimizer.optimizer if hasattr(tr.optimizer, "optimizer") else tr.optimizer
        held = storages(t for s in opt.state.values() for t in s.values())
        self._optimizer_storages = set(held)
        self.live["optimizer"] = sum(held.values())

    def _sample_method(self) -> dict[int, int]:
        tr = self.trainer
        exclude = tr.param_storages()
        every: dict[int, int] = {}
        detail: dict[str, int] = {}
        for name, storages in reachable_tensors(tr.method).items():
            fresh = {p: b for p, b in storages.items() if p not in exclude and p not in every}
            every.update(fresh)
            if fresh:
                key = name.lstrip("_")
                detail[key] = detail.get(key, 0) + sum(fresh.values())
        total = sum(every.values())
        self.live["method_state"] = total
        if total >= self.max["method_state"]:
            self.method_detail = detail
        return every

    # ------------------------------------------------------------------------------------------ phases
    @contextmanager
    def __call__(self, phase: str):
        with ExitStack() as stack:
            if phase in ("forward", "extra_loss"):
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor))
            if phase == "selection" and not self._after_backward:
                self._after_backward = True  # the first selection phase of a step: right after backward
                self._sample_method()
                self._note()
            with super().__call__(phase):
                yield

    def end_step(self) -> None:
        super().end_step()
        # Just before zero_grad the gradients still existed beside the (possibly new) optimizer state.
        self._sample_optimizer()
        self._sample_method()
        self._note()
        self.live["gradients"] = 0
        self._grads.clear()
        self._step_open = False
        self._after_backward = False

    def close(self) -> None:
        """Stop following tensors: remove the gradient hooks (the saved-tensor hooks live only while a phase
        of this timer is open)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def breakdown(self) -> dict[str, Any]:
        return {"at_peak": dict(self.at_peak), "max": {"weights": self.weights, **self.max}}

