"""The hooks a method (or regulariser) can use, and the context the engine hands them.

The training loop calls, for every plugin (the method first, then regularisers in the order given):

    setup(ctx)                   once, after the model is built and before the optimizer exists
    after_setup()                once, after every plug-in's setup: passes that score the model (Child-Tuning
                                 D's Fisher) run here, so they see the model as it is trained (re-initialised
                                 layers, dropout changed by other plug-ins)
    trainable(name, param)       choose trainable parameters (method only; None = no opinion)
    param_groups(groups)         adjust optimizer parameter groups (e.g. layer-wise LR decay)
    on_optimizer(optimizer)      once, when the optimizer exists (e.g. give it masks)
    before_forward(step)         change the weights a forward sees (Mixout, DPS Mix)
    extra_loss(model, batch, out) -> Tensor | None     add loss terms (R3F, R-Drop)
    after_backward(step)         gradients of one optimizer step are accumulated and unscaled,
                                 not yet clipped: masks act here (DPS, Random/Top/Stochastic Tuning)
    after_clip(step)             the gradients are clipped, the optimizer has not stepped: masks of
                                 references that clip the full gradient first act here (Child-Tuning)
    optimizer_step(optimizer) -> bool   replace the optimizer step (exact sparse updates); True = done
    after_step(step)             after the optimizer and scheduler stepped
    train_mode() / eval_mode()   around evaluation (Mixout evaluates the raw weights)
    stats() -> dict              numbers for metrics.jsonl and the live table (selected shares...)
    state_dict() / load_state_dict(state)    saved in checkpoints (tensors and plain values only)

and, when the run ends (sftune.run), for every plugin:

    initial_weights() -> dict    weights this plug-in set before training that count as the starting point
                                 of the changed-entries count and the sparse diff (none by default)
    summary_stats() -> dict      entries for results.json (what was re-initialised, the budget k...)

The method alone (not regularisers) also has, read by the loop, the run and the memory profiler:

    own_optimizer(groups, lr, betas, eps, fused) -> Optimizer | None   the optimizer its updates need, built
                                 from the AdamW settings (masked methods in update mode: MaskedAdamW);
                                 None = the standard AdamW
    selects_per_step             class flag: a new selection every step (the live table shows its share)
    selected_counts() -> dict | None   entries selected in the last step per parameter; None = every
                                 trainable entry (dense)
    masks                        this step's masks per parameter, or None (compared across processes)
    candidates                   the parameters a selection is drawn from ({} for dense methods)
    flat_capable                 class flag: its selections can act on one flat gradient buffer
    export(run_path, tokenizer) -> (model, write) | None   replace the saved model (LoRA writes adapter/
                                 and returns the merged model); None = save the trained model as it is
    state_bytes(peak) -> dict | None   bytes of its persistent state, measured (memprofile's `declared`)
    state_estimate(mask_mode, flat_grads) -> dict | None   bytes of its persistent state at its largest
                                 stage, computed after setup on a meta model (memprofile --estimate);
                                 None = not modelled

`step` is the 1-based index of the optimizer step about to happen (or that just happened, for after_step),
counted in optimizer steps, never in forward passes.

Every hook that takes an optimizer (on_optimizer, optimizer_step) gets the same object: the one the loop
steps, accelerate's `AcceleratedOptimizer` wrapper in a run (its `step()` applies mixed precision's loss
scaling; the torch optimizer it wraps is its `.optimizer`). Plug-ins that need the torch optimizer itself
(MaskedAdamW's `set_mask`) unwrap it with `torch_optimizer()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from sftune.options import MethodChoice, PluginChoice, validate


@dataclass
class RunContext:
    model: nn.Module
    task: Any  # sftune.tasks.Task
    config: Any  # sftune.config.RunConfig
    accelerator: Any
    train_loader: Any  # batches of the training set (Child-Tuning D's Fisher pass reads it)
    total_steps: int
    groups: dict[str, str]  # parameter name -> module group
    head: tuple[str, ...]  # name prefixes of the task head

    def generator(self, salt: str) -> torch.Generator:
        """A generator seeded from the run seed and `salt`, on the model's device: same seed, same masks."""
        import zlib

        device = next(self.model.parameters()).device
        g = torch.Generator(device=device)
        g.manual_seed(self.config.train.seed * 1_000_003 + zlib.crc32(salt.encode()))
        return g


@dataclass
class NoOptions:
    pass


class Hooks:
    """No-op implementations of every hook; subclasses override what they need."""

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def after_setup(self) -> None:
        pass

    def trainable(self, name: str, param: nn.Parameter) -> bool | None:
        return None

    def param_groups(self, groups: list[dict]) -> list[dict]:
        return groups

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def before_forward(self, step: int) -> None:
        pass

    def extra_loss(self, model: nn.Module, batch: dict, outputs: Any) -> torch.Tensor | None:
        return None

    def after_backward(self, step: int) -> None:
        pass

    def after_clip(self, step: int) -> None:
        pass

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        return False

    def after_step(self, step: int) -> None:
        pass

    def train_mode(self) -> None:
        pass

    def eval_mode(self) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def initial_weights(self) -> dict[str, torch.Tensor]:
        return {}

    def summary_stats(self) -> dict[str, Any]:
        return {}


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's wrapper (the optimizer itself when it is not wrapped: tests and
    the memory estimate drive the hooks without accelerate)."""
    from accelerate.optimizer import AcceleratedOptimizer

    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


def changes_gradients(plugin: Hooks) -> bool:
    """Whether the plug-in's after_backward may change the gradients: any override of the no-op may. (The loop
    then computes the clipping norm again instead of reusing the divergence guard's.)"""
    return type(plugin).after_backward is not Hooks.after_backward


class Plugin(Hooks):
    """A registered plug-in with options: a method or a regulariser."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    details: ClassVar[str] = ""  # longer help: source, quirks kept in reference mode, sftune choices
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, mask_mode: str = "grad"):
        # config.build validates options (every error at once, before the model loads); this check covers
        # plug-ins built directly (tests, benchmarks) by the same declarations.
        self.options = options if options is not None else self.Options()
        validate(self.options, self.name)
        self.mask_mode = mask_mode

    @classmethod
    def from_config(cls, choice: PluginChoice) -> "Plugin":
        """The plug-in a RunConfig chose (`cfg.method` or one of `cfg.regs`), with its validated options."""
        return cls(choice.options)


class Regularizer(Plugin):
    """A regulariser: composes with any method. `incompatible` names methods/regularisers it cannot join."""

    incompatible: ClassVar[tuple[str, ...]] = ()


class Method(Plugin):
    """A fine-tuning method. Subclasses set `name`, `summary`, optionally `Options`, and `@register`."""

    selects_per_step: ClassVar[bool] = False
    flat_capable: ClassVar[bool] = False
    masks: dict[str, torch.Tensor] | None = None
    candidates: Mapping[str, nn.Parameter] = MappingProxyType({})  # read-only default; setup assigns a dict

    @classmethod
    def from_config(cls, choice: MethodChoice) -> "Method":
        return cls(choice.options, choice.mask_mode)

    def trainable(self, name: str, param: nn.Parameter) -> bool | None:
        return True

    def own_optimizer(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                      fused: bool) -> torch.optim.Optimizer | None:
        return None

    def selected_counts(self) -> dict[str, torch.Tensor | int] | None:
        return None

    def export(self, run_path: Path, tokenizer: Any) -> tuple[nn.Module, bool] | None:
        return None

    def state_bytes(self, peak: bool = False) -> dict[str, int] | None:
        return None

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int] | None:
        return {}  # no persistent state
