"""lora, dora: low-rank adapters through the `peft` library, the baseline sparse methods are compared with.

peft injects the adapters into the model in place (`get_peft_model`), so the training loop, checkpoints and
the optimizer see an ordinary model whose trainable parameters are the adapters (`...lora_A.default.weight`,
`...lora_B.default.weight`, DoRA's `...lora_magnitude_vector.default.weight`) and a trainable copy of the
task head (peft's `modules_to_save`, so the adapter it saves is usable on its own).

Targets by default: every nn.Linear and transformers Conv1D inside the base model's layer lists (`lora_targets`):
BERT query/key/value/attention output/intermediate/output dense, Llama q/k/v/o/gate/up/down_proj, GPT-2
c_attn/c_proj/c_fc (Conv1D, hence `fan_in_fan_out`). Embeddings, the pooler and the head are not targets.

At the end of a run `export` writes `adapter/` in peft's own format (adapter_config.json,
adapter_model.safetensors, plus the tokenizer) and, with `method.merge=true`, `model/` as a plain
transformers model with the adapters merged into the weights. `load_adapter` is what `sftune eval` uses on a
run without `model/`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sftune.errors import UsageError
from sftune.methods.base import Method
from sftune.options import option
from sftune.registry import register

ADAPTER_DIR = "adapter"  # in the run directory


@dataclass
class LoraOptions:
    rank: int = option(8, "r: the rank of each adapter (B A, with A: r x in, B: out x r).", ge=1)
    alpha: float = option(16.0, "lora_alpha: the adapter's output is scaled by alpha / rank.")
    dropout: float = option(0.05, "Dropout on the adapter's input (lora_dropout).", ge=0, lt=1)
    targets: list[str] | None = option(None, "Module names (or name suffixes, peft's rule) that get adapters, "
                                       "e.g. query,value or q_proj,v_proj; default: every Linear/Conv1D in the "
                                       "transformer layers (attention and MLP projections).")
    use_dora: bool = option(False, "DoRA: a learned magnitude per output row on top of the low-rank direction.")
    merge: bool = option(False, "Also write model/ with the adapters merged into the weights (a plain "
                         "transformers model); adapter/ is always written.")


@dataclass
class DoraOptions(LoraOptions):
    use_dora: bool = option(True, "DoRA: a learned magnitude per output row on top of the low-rank direction.")


def _projection_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def lora_targets(model: nn.Module) -> list[str]:
    """The default targets: full names of every Linear/Conv1D inside an nn.ModuleList of the base model (the
    transformer layers: BERT encoder.layer, Llama model.layers, GPT-2 transformer.h, BART encoder/decoder
    layers). The head, the pooler and embedding projections sit outside those lists."""
    base = getattr(model, "base_model_prefix", "")
    root = getattr(model, base, None) if base else None
    prefix = f"{base}." if isinstance(root, nn.Module) else ""
    root = root if isinstance(root, nn.Module) else model
    kinds = _projection_types()
    lists = [name for name, m in root.named_modules() if isinstance(m, nn.ModuleList)]
    out = []
    for name, module in root.named_modules():
        if isinstance(module, kinds) and any(name.startswith(f"{outer}.") for outer in lists):
            out.append(prefix + name)
    return out


def matched_modules(model: nn.Module, targets: list[str] | None) -> dict[str, nn.Module]:
    """The modules that get adapters: the default rule, or peft's rule for given names (a module whose full
    name equals a target or ends with '.' + target)."""
    kinds = _projection_types()
    if targets is None:
        wanted = set(lora_targets(model))
        return {n: m for n, m in model.named_modules() if n in wanted}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, kinds) and any(n == t or n.endswith(f".{t}") for t in targets)}


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    rows, cols = module.weight.shape  # transformers Conv1D stores the weight as (in, out)
    return int(rows), int(cols)


def adapter_entries(model: nn.Module, rank: int, targets: list[str] | None = None, dora: bool = False) -> int:
    """Trainable entries the adapters add: rank * (in + out) per target (A and B), plus out per target for
    DoRA's magnitude. Counted from the module shapes, without peft (the sparse methods' `lora_rank` budget)."""
    total = 0
    for module in matched_modules(model, targets).values():
        fan_in, fan_out = _in_out(module)
        total += rank * (fan_in + fan_out) + (fan_out if dora else 0)
    return total


def _peft():
    try:
        import peft
    except ImportError:
        raise UsageError("methods lora and dora need the peft package: pip install peft (or the sftune[lora] "
                         "extra).") from None
    return peft


def head_modules(model: nn.Module, head: tuple[str, ...]) -> list[str]:
    """The head's top-level modules for peft's modules_to_save, except the output embeddings (a causal LM's
    lm_head stays frozen under LoRA, as in peft's own recipes)."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for prefix in head:
        name = prefix.rstrip(".")
        module = model.get_submodule(name) if name else None
        if isinstance(module, nn.Module) and module is not out_emb:
            names.append(name)
    return names


@register
class Lora(Method):
    name = "lora"
    summary = "LoRA through peft: low-rank adapters on the attention and MLP projections; the head trains."
    details = ("Hu et al. 2022, via the peft library (pip install peft). Adapters B A (rank r, scale alpha/r, B "
               "zero-initialised, A Kaiming-uniform: peft's defaults) on every Linear/Conv1D in the transformer "
               "layers unless method.targets names others; every pre-trained weight is frozen; the head trains "
               "(peft modules_to_save). adapter/ holds the adapter in peft's format; method.merge=true also "
               "writes model/ merged. method.use_dora=true (or --method dora) is DoRA.")
    Options = LoraOptions

    def setup(self, ctx) -> None:
        super().setup(ctx)
        o = self.options
        peft = _peft()
        model = ctx.model
        targets = matched_modules(model, o.targets)
        if not targets:
            what = ", ".join(o.targets) if o.targets else "Linear/Conv1D layers inside the transformer layers"
            raise UsageError(f"method {self.name}: no module of {type(model).__name__} matches {what}. Name "
                             "modules with --set method.targets=NAME,NAME (e.g. query,value or q_proj,v_proj).")
        conv = [n for n, m in targets.items() if not isinstance(m, nn.Linear)]
        if conv and len(conv) != len(targets):
            raise UsageError(f"method {self.name}: targets mix Linear and Conv1D layers ({conv[0]}); name one kind "
                             "with --set method.targets=...")
        config = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=list(targets),
                                 use_dora=o.use_dora, fan_in_fan_out=bool(conv),
                                 modules_to_save=head_modules(model, ctx.head) or None)
        # Injects the adapters into `model` in place; the wrapper is kept for saving and merging.
        with _quiet_peft():
            self.peft_model = peft.get_peft_model(model, config)
        self.n_targets = len(targets)
        self._trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        self.entries = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)

    def trainable(self, name, param):
        return self._trainable.get(name, False)  # what peft left trainable: adapters and the head's copy

    def summary_stats(self) -> dict:
        return {"adapter": {"path": ADAPTER_DIR, "entries": self.entries, "targets": self.n_targets,
                            "rank": self.options.rank, "dora": self.options.use_dora,
                            "merged_model": self.options.merge}}

    def export(self, run_path: Path, tokenizer) -> tuple[nn.Module, bool]:
        """Write adapter/ (peft format) and return the model with the adapters merged in (in place: call it
        last) and whether model/ should be written from it."""
        from sftune.artifacts import replace_dir

        tmp = Path(run_path) / f"{ADAPTER_DIR}.tmp"
        self.peft_model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        replace_dir(tmp, Path(run_path) / ADAPTER_DIR)
        return self.peft_model.merge_and_unload(), self.options.merge


@register
class Dora(Lora):
    name = "dora"
    summary = "DoRA through peft: LoRA with a learned magnitude per output row (weight-decomposed)."
    details = ("Liu et al. 2024, via peft (LoraConfig(use_dora=True)); otherwise as lora: same targets, options "
               "and artifacts. Adds out_features trainable entries per target.")
    Options = DoraOptions


@contextmanager
def _quiet_peft():
    """peft (0.21) reads the model's `is_gradient_checkpointing`, which transformers 5 deprecates with a
    FutureWarning on every LoRA run: a message about the two libraries, nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapter(model: nn.Module, path: Path) -> nn.Module:
    """Apply a saved adapter (peft format) to a freshly built base model, in place, merged: the returned model
    is `model` itself with plain layers (what `sftune eval` evaluates)."""
    peft = _peft()
    try:
        with _quiet_peft():
            wrapped = peft.PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot load the adapter in {path} ({type(e).__name__}: {e}). It must be a run's "
                         "adapter/ directory (peft format) for this base model.") from None
    return wrapped.merge_and_unload()
