"""Run configuration: dataclasses whose field help is the documentation, merged from defaults, a preset,
CLI options and `--set key=value` overrides, then validated, reporting every error at once.

The resolved configuration is a nested mapping written to `config.yaml` in the run directory:

    model:  {name, trust_remote_code, revision, dropout}
    task:   rte
    method: {name, mask_mode, <the method's own options>}
    data:   {data_dir, train_file, ...}
    train:  {seed, batch_size, lr, ...}
"""

from __future__ import annotations

import dataclasses
import keyword
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftune.errors import UsageError, did_you_mean

# Declaring, coercing and checking options lives in the leaf module sftune.options (plug-ins import it from there).
from sftune.options import MethodChoice, PluginChoice, coerce, coerce_field, option, plugin_options
from sftune.tasks import TASKS

LM_MAX_LENGTH = 384  # data.max_length of causal-LM tasks when the configuration leaves it unset


@dataclass
class ModelConfig:
    name: str = option("", "Hub id, local path, or alias ('minilm': the offline MiniLM weights).")
    trust_remote_code: bool = option(False, "Run the model repository's own Python code. Only the command-line "
                                     "flag --trust-remote-code turns it on (a preset, sweep file or --set cannot).")
    revision: str | None = option(None, "Hub revision (branch, tag or commit).")
    dropout: float | None = option(None, "Override hidden and attention dropout (DPS reference sets 0).")


@dataclass
class DataConfig:
    data_dir: str | None = option(None, "GLUE-format directory (or SFTUNE_DATA_DIR); default: the Hub.")
    train_file: str | None = option(None, "CSV/TSV/JSONL training file (overrides the task's source).")
    validation_file: str | None = option(None, "CSV/TSV/JSONL validation file.")
    text_columns: list[str] | None = option(None, "Text column(s) in --train-file/--validation-file.")
    label_column: str = option("label", "Label column in --train-file/--validation-file.")
    max_length: int = option(128, "Maximum tokens per example (longest-first truncation). Causal-LM tasks "
                                  f"(gsm8k, instruct) default to {LM_MAX_LENGTH} when it is not set: 128 cuts "
                                  "most GSM8K answers (with SmolLM2's chat template a row averages 217 tokens, "
                                  "p95 350; 384 keeps 97.8% whole). Causal-LM rows are cut at the model's "
                                  "context length when it is shorter.")
    train_size: int | None = option(None, "Use only this many training examples, drawn from the seed.")
    stratified: bool = option(False, "Draw --train-size keeping the label proportions.")
    validation_from_train: int | None = option(None, "Set this many training examples aside (stratified, drawn "
                                               "from data.validation_seed) and evaluate on them as split "
                                               "'heldout': model selection without touching dev. "
                                               "--train-size then draws from the rest.")
    validation_seed: int = option(0, "Seed of the held-out draw (the same rows for every run seed).")
    eval_batch_size: int = option(64, "Batch size for evaluation (and for generation in causal-LM tasks).")
    eval_size: int | None = option(None, "Causal-LM tasks: evaluate on the first N examples of each evaluation "
                                   "split only (a fixed subset, so CPU runs stay affordable).")
    max_new_tokens: int = option(256, "Causal-LM tasks: at most this many generated tokens per answer; 0 skips "
                                 "generation (loss and perplexity only).")
    temperature: float = option(0.0, "Causal-LM tasks: 0 generates greedily; above 0, samples at that temperature.")
    generation_threads: int = option(1, "Causal-LM tasks on a CPU: intra-op threads while generating (decode steps "
                                     "are tiny; on shared cores more threads wait at every barrier); 0 keeps "
                                     "torch's setting.")


@dataclass
class TrainConfig:
    seed: int = option(42, "Seed for model initialisation, data order, dropout and selectors.")
    batch_size: int = option(16, "Examples per optimizer step (before gradient accumulation splits it).")
    lr: float = option(2e-5, "Peak learning rate.")
    epochs: float = option(3.0, "Training epochs (ignored when max_steps is set).")
    max_steps: int | None = option(None, "Total optimizer steps; overrides epochs.")
    warmup_ratio: float = option(0.1, "Share of steps for linear warmup.")
    warmup_steps: int | None = option(None, "Warmup steps; overrides warmup_ratio.")
    scheduler: str = option("linear", "transformers scheduler name (linear, cosine, constant_with_warmup, ...).")
    weight_decay: float = option(0.01, "AdamW decoupled weight decay (never on biases and LayerNorm).")
    adam_eps: float = option(1e-8, "AdamW epsilon (Stochastic Tuning uses 1e-6).")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables.")
    grad_accum: int = option(1, "Gradient accumulation steps (batch_size is split into this many parts).")
    precision: str = option("no", "Mixed precision: no, fp16 or bf16.", choices=("no", "fp16", "bf16"))
    eval_every: int | None = option(None, "Evaluate every N optimizer steps; default: every epoch.")
    log_every: int = option(10, "Record metrics every N optimizer steps.")
    save_every: int | None = option(None, "Checkpoint every N steps; default: at every evaluation.")
    keep_checkpoint: bool = option(False, "Keep checkpoint/ once the run completes (it exists to resume an "
                                   "interrupted run; by default a completed run deletes it).")
    keep_weights: str = option("model", "Weights a completed run keeps: model (model/), diff (only the sparse "
                               "diff.safetensors where the run wrote one, else model/), none (metrics and "
                               "predictions only).", choices=("model", "diff", "none"))
    report_to: str | None = option(None, "Experiment trackers, comma-separated: tensorboard, wandb, mlflow, "
                                   "trackio (through accelerate; logs go to RUN_DIR/trackers).")
    plots: bool = option(False, "Write plots.png (loss, lr, validation metric, shares) into the run directory "
                         "at the end (needs matplotlib).")
    save_minutes: float = option(10.0, "Also checkpoint when this many minutes passed since the last checkpoint "
                                 "(bounds what a kill -9 loses); 0 disables.")
    nonfinite: str = option("stop", "On a non-finite loss or gradient norm: stop (status diverged, exit 3) or "
                            "skip the step (no update, as mixed-precision loss scaling does).",
                            choices=("stop", "skip"))
    cpu: bool = option(False, "Train on the CPU even when an accelerator is present.")
    check_masks: bool = option(True, "In multi-process runs, compare a hash of each step's masks across ranks "
                               "and stop on divergence.")
    mask_hash_log: str | None = option(None, "Directory where every rank appends its per-step mask hashes "
                                       "(rank<N>.jsonl), to debug divergence.")
    flat_grads: str = option("auto", "Keep the sparse methods' candidate gradients in one flat buffer so a step's "
                             "selection is a few kernels for the whole model: auto (on CUDA in single-process "
                             "runs), on, off. Same results; costs up to the candidates' gradient bytes of peak "
                             "memory.", choices=("auto", "on", "off"))
    measure_changed: bool = option(True, "On logged steps, count the entries the step really changed "
                                   "(costs a transient copy of the trainable weights on those steps).")


@dataclass
class RunConfig:
    model: ModelConfig
    task: str
    method: MethodChoice  # the method's name, mask mode and its validated Options instance
    data: DataConfig
    train: TrainConfig
    regs: list[PluginChoice] = field(default_factory=list)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dataclasses.asdict(self.model),
            "task": self.task,
            "method": self.method.to_dict(),  # {name, mask_mode, **options}: the config.yaml shape
            "regs": [r.to_dict() for r in self.regs],
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "preset": self.preset,
        }


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
MASK_MODES = ("grad", "update")


# ------------------------------------------------------------------------------------------------ merging
def parse_set(items: list[str]) -> dict[str, str]:
    """`--set a.b=v` items -> {'a.b': 'v'}; a malformed item is a UsageError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set '{item}': expected key=value, e.g. --set train.lr=1e-5.")
        out[key.strip()] = value.strip()
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set '{dotted}': '{part}' is not a section.")
    node[parts[-1]] = value


def refuse_remote_code(tree: dict, where: str) -> None:
    """Running a model repository's own Python is the user's decision on the command line: a preset, a sweep
    file or --set that turns model.trust_remote_code on is refused, naming where it came from."""
    value = (tree.get("model") or {}).get("trust_remote_code") if isinstance(tree.get("model"), dict) else None
    if value is None:
        return
    try:
        on = coerce(value, bool)
    except ValueError:
        on = True
    if on:
        raise UsageError(f"{where} sets model.trust_remote_code, which would run the model repository's own "
                         "Python code; only the command-line flag --trust-remote-code may turn it on. Remove it "
                         f"from {where} and pass the flag if you trust that code.")


def refuse_remote_code_in_sets(sets: dict[str, Any], where: str) -> None:
    """`--set` items (dotted keys -> values) refused as `refuse_remote_code` refuses a tree."""
    given: dict = {}
    for key, value in sets.items():
        set_dotted(given, key, value)
    refuse_remote_code(given, where)


def refuse_unrepeated_remote_code(recorded: Any, typed: bool, what: str, to: str) -> None:
    """A run trained with --trust-remote-code runs its model's own code again only when the flag is typed again
    (resume, eval, transfer): the run's recorded choice is never carried over."""
    if recorded and not typed:
        raise UsageError(f"{what} was trained with --trust-remote-code (its model runs its own Python code); "
                         f"pass --trust-remote-code again to {to}.")


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def all_keys(method_options: type | None = None) -> list[str]:
    """Every dotted key `--set` accepts (for did-you-mean)."""
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    keys += ["method.mask_mode", "method.name"]
    if method_options is not None:
        keys += [f"method.{f.name}" for f in dataclasses.fields(method_options)]
    return keys


def build(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested config mapping into a RunConfig, reporting all problems in one error."""
    from sftune.registry import get_method  # late: the registry imports every method module

    errors: list[str] = []
    tree = dict(tree)
    task = tree.pop("task", None)
    method_tree = dict(tree.pop("method", None) or {})
    regs = tree.pop("regs", None) or []
    preset = tree.pop("preset", None)
    sections: dict[str, Any] = {}
    data_keys = set(tree.get("data") or {})
    for name, cls in SECTIONS.items():
        given = dict(tree.pop(name, None) or {})
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in given:
                try:
                    values[f.name] = coerce_field(name, f, given.pop(f.name), hints)
                except ValueError as e:
                    errors.append(str(e))
        for key in given:
            errors.append(f"unknown key '{name}.{key}'.{did_you_mean(f'{name}.{key}', all_keys())}")
        sections[name] = cls(**values)
    for key in tree:
        errors.append(f"unknown section '{key}'.{did_you_mean(key, [*SECTIONS, 'task', 'method', 'regs'])}")

    method_name = method_tree.pop("name", "full")
    mask_mode = method_tree.pop("mask_mode", "grad")
    if mask_mode not in MASK_MODES:
        errors.append(f"method.mask_mode: expected grad or update, got '{mask_mode}'")
    try:
        method_cls = get_method(method_name)
    except UsageError as e:
        errors.append(str(e))
        method_cls = None
    method = None
    if method_cls is not None:
        own = ", ".join(f.name for f in dataclasses.fields(method_cls.Options)) or "none"

        def unknown_key(key: str) -> str:
            hint = did_you_mean(f"method.{key}", all_keys(method_cls.Options))
            return f"unknown key 'method.{key}' for method {method_name}.{hint} Its options: {own}"

        options = plugin_options(method_cls.Options, method_tree, "method", unknown_key, errors)
        method = MethodChoice(str(method_name), options, mask_mode)

    regs_out = _build_regs(regs, method_name, errors)

    if "max_length" not in data_keys and _is_causal_lm(task):
        sections["data"].max_length = LM_MAX_LENGTH
    model = sections["model"]
    if not task:
        errors.append("no task given")
    if not model.name:
        errors.append("no model given")
    train: TrainConfig = sections["train"]
    for key in ("batch_size", "grad_accum", "log_every", "max_length"):
        obj = sections["data"] if key == "max_length" else train
        if getattr(obj, key) < 1:
            errors.append(f"{key} must be at least 1, got {getattr(obj, key)}")
    if train.batch_size % train.grad_accum:
        errors.append(f"train.batch_size ({train.batch_size}) must be divisible by "
                      f"train.grad_accum ({train.grad_accum})")
    if train.max_steps is not None and train.max_steps < 1:
        errors.append(f"train.max_steps must be at least 1, got {train.max_steps}")
    if train.max_steps is None and train.epochs <= 0:
        errors.append(f"train.epochs must be positive, got {train.epochs}")
    errors += _range_errors(sections["model"], sections["data"], train)
    if errors:
        raise UsageError("invalid configuration: " + "; ".join(errors))
    assert method is not None  # an unknown method is an error above
    return RunConfig(model=model, task=str(task), method=method, data=sections["data"], train=train,
                     regs=regs_out, preset=preset)


def _is_causal_lm(task: Any) -> bool:
    # unknown task names are reported where the task is read (get_task, with did-you-mean)
    return str(task) in TASKS and TASKS[str(task)].is_causal_lm


def _range_errors(model: ModelConfig, data: DataConfig, train: TrainConfig) -> list[str]:
    """Values of the right type but outside what training can use (a negative learning rate, a beta of 1)."""
    checks = [
        ("train.lr", train.lr, train.lr >= 0, "at least 0 (a few 1e-5 is usual)"),
        ("train.weight_decay", train.weight_decay, train.weight_decay >= 0, "at least 0"),
        ("train.adam_eps", train.adam_eps, train.adam_eps > 0, "positive"),
        ("train.adam_beta1", train.adam_beta1, 0 <= train.adam_beta1 < 1, "in [0, 1)"),
        ("train.adam_beta2", train.adam_beta2, 0 <= train.adam_beta2 < 1, "in [0, 1)"),
        ("train.max_grad_norm", train.max_grad_norm, train.max_grad_norm >= 0, "at least 0 (0 disables)"),
        ("train.warmup_ratio", train.warmup_ratio, 0 <= train.warmup_ratio <= 1, "in [0, 1]"),
        ("train.warmup_steps", train.warmup_steps, train.warmup_steps is None or train.warmup_steps >= 0,
         "at least 0"),
        ("train.eval_every", train.eval_every, train.eval_every is None or train.eval_every >= 1, "at least 1"),
        ("train.save_every", train.save_every, train.save_every is None or train.save_every >= 1, "at least 1"),
        ("train.save_minutes", train.save_minutes, train.save_minutes >= 0, "at least 0 (0 disables)"),
        ("data.eval_batch_size", data.eval_batch_size, data.eval_batch_size >= 1, "at least 1"),
        ("data.train_size", data.train_size, data.train_size is None or data.train_size >= 1, "at least 1"),
        ("data.validation_from_train", data.validation_from_train,
         data.validation_from_train is None or data.validation_from_train >= 1, "at least 1"),
        ("data.max_new_tokens", data.max_new_tokens, data.max_new_tokens >= 0, "at least 0 (0: no generation)"),
        ("data.generation_threads", data.generation_threads, data.generation_threads >= 0,
         "at least 0 (0 keeps torch's thread count)"),
        ("model.dropout", model.dropout, model.dropout is None or 0 <= model.dropout < 1, "in [0, 1)"),
    ]
    return [f"{key} must be {expected}, got {value}" for key, value, ok, expected in checks if not ok]


def parse_reg(text: str) -> dict[str, str]:
    """`--reg mixout:p=0.3,x=1` -> {'name': 'mixout', 'p': '0.3', 'x': '1'}."""
    name, _, rest = text.partition(":")
    out = {"name": name.strip()}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--reg '{text}': expected NAME or NAME:key=value,..., e.g. --reg mixout:p=0.3.")
        out[key.strip()] = value.strip()
    return out


def _build_regs(regs: list, method_name: str, errors: list[str]) -> list[PluginChoice]:
    """Validate regulariser entries against their Options; one entry per name (later ones win)."""
    from sftune.registry import get_regularizer

    given: dict[str, dict] = {}  # name -> its options as given, later entries overriding earlier ones
    for entry in regs:
        entry = dict(entry) if isinstance(entry, dict) else parse_reg(str(entry))
        name = str(entry.pop("name", ""))
        try:
            cls = get_regularizer(name)
        except UsageError as e:
            errors.append(str(e))
            continue
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        # A Python keyword names the field with a trailing _: r3f:lambda=1 -> lambda_.
        entry = {f"{k}_" if k not in fields and keyword.iskeyword(k) and f"{k}_" in fields else k: v
                 for k, v in entry.items()}
        clash = set(cls.incompatible) & ({method_name} | set(given))
        if clash:
            errors.append(f"regulariser {name} cannot be combined with {', '.join(sorted(clash))}")
        given[name] = {**given.get(name, {}), **entry}
    out = []
    for name, entry in given.items():
        cls = get_regularizer(name)
        names = [f.name for f in dataclasses.fields(cls.Options)]

        def unknown_key(key: str, name=name, names=names) -> str:
            return f"unknown option '{key}' for regulariser {name}.{did_you_mean(key, names)} " \
                   f"Its options: {', '.join(names) or 'none'}"

        out.append(PluginChoice(name, plugin_options(cls.Options, entry, f"reg {name}", unknown_key, errors)))
    return out


# ------------------------------------------------------------------------------------------------- YAML
def load_yaml(path: Path, what: str = "file") -> dict:
    """Read a YAML mapping safely; a malformed or non-mapping file is a one-line UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise UsageError(f"{what} {path} is not valid YAML{where}: {problem}. Fix the file and retry.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a YAML mapping (key: value), not {type(data).__name__}.")
    return data


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
