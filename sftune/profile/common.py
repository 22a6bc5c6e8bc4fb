"""What the measured and the estimated memory profiles share: the cells, the model's configuration, the
synthetic batches and each cell's run configuration.

MODEL is a local directory (save_pretrained format), a Hub id, the alias `minilm`, or a built-in shape
`shape:NAME` (a config only, random weights, nothing downloaded: see `SHAPES`). With `random_init` a local
directory or Hub id is also built from its config alone, without reading its weights.

The steps train on synthetic batches: `batch_size x seq_len` token ids drawn uniformly from the vocabulary
(never the pad id), an all-ones attention mask, and random labels; TASK only sets the number of labels.
The shapes are then exactly the ones asked for, and no dataset or tokenizer is needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sftune.errors import UsageError

SHAPE_PREFIX = "shape:"
# Built-in shapes: (model type, config overrides on top of that type's defaults). Weights are random.
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
_BERT = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
SHAPES: dict[str, tuple[str, dict]] = {
    "roberta-base": ("roberta", dict(_ROBERTA, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072)),
    "roberta-large": ("roberta", dict(_ROBERTA, **_LARGE)),
    "bert-base-uncased": ("bert", dict(_BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072)),
    "bert-large-uncased": ("bert", dict(_BERT, **_LARGE)),
    # Decoders, from their published config.json values (rope scaling left out: it changes no tensor's size).
    # The pad id is one the tokenizer defines (SmolLM2, Qwen2.5) or a reserved Llama 3 token; the synthetic
    # batches never contain it, so the sequence-classification head reads the last token.
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                   rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                   bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)),
    "llama-3.2-1b": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                   max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                                   pad_token_id=128004)),
    # Estimate only (sftune memprofile --estimate): 32 GB of float32 weights alone.
    "llama-3-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                 bos_token_id=128000, eos_token_id=128001, pad_token_id=128004)),
}

PRECISIONS = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}  # --precision -> train.precision
DEFAULT_METHODS = ("full", "bitfit", "child-tuning-d", "dps-dense", "dps-mix", "stochastic")
# Settings the profile applies unless --set overrides them: the Child-Tuning D Fisher pass reads one batch
# (its memory does not depend on how many batches it reads; a full pass would only cost time).
PROFILE_METHOD_DEFAULTS = {"child-tuning-d": {"fisher_batches": 1}}

# The parts of a peak, in table order, and the step phases (PhaseTimer's) with their column names.
PARTS = ("weights", "gradients", "optimizer", "method_state", "activations", "runtime")
PART_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer",
               "method_state": "method state", "activations": "activations", "runtime": "runtime"}
# forward = the model's forward alone; hooks = the plug-ins' before_forward (DPS stage starts, Mixout draws).
TIME_PHASES = {"forward": "forward", "hooks": "fwd hooks", "extra_loss": "extra fwd", "backward": "backward",
               "selection": "selection", "optimizer": "optimizer"}
LEGEND = {
    "measured": "Measured: peak = high-water mark above a baseline taken before the model existed (CPU: resident "
                "memory; CUDA: allocated). Parts, measured from tensors at the moment their sum peaked: weights "
                "(parameters and buffers), gradients, optimizer state, method state (every tensor the method "
                "object holds that is not a parameter, gradient or optimizer state), activations (tensors saved "
                "for backward), runtime (process memory at the start of the step beyond those tensors: Python "
                "objects, kernel caches). "
                "Derived: other = peak - parts (backward and selection temporaries, allocator slack; may be "
                "negative). At a forward-end peak no gradient exists yet.",
    "estimated": "Estimated, nothing run: model built on the meta device; weights, gradients and AdamW state from "
                 "parameter counts and the method's trainable() rules; method state from each method's documented "
                 "layout at its largest stage; activations = tensors saved by one meta forward pass. Peak = "
                 "weights + optimizer + method state + max(activations, gradients); runtime and temporaries are "
                 "not estimated.",
}


@dataclass
class Cell:
    """One (method, batch size) of a profile, with everything a child process needs to run it alone."""

    model: str
    task: str
    method: str
    batch_size: int
    seq_len: int = 128
    steps: int = 3
    precision: str = "fp32"  # fp32 | fp16 | bf16
    mask_mode: str = "grad"
    random_init: bool = False
    cpu: bool = False
    seed: int = 42
    sets: dict[str, str] = field(default_factory=dict)  # dotted config keys (already filtered per method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        return f"{self.method} bs={self.batch_size}"


# ------------------------------------------------------------------------------------------------ model
def is_shape(model: str) -> bool:
    return model.startswith(SHAPE_PREFIX)


def _shape(model: str) -> tuple[str, dict]:
    name = model[len(SHAPE_PREFIX):]
    if name not in SHAPES:
        from sftune.errors import unknown

        raise unknown("model shape", name, SHAPES, "Built-in shapes are random-weight configs; give "
                      "shape:NAME.")
    return SHAPES[name]


def load_config(model: str, task: str, dropout: float | None = None):
    """The model's transformers config, with the task's labels set (and dropout, when overridden)."""
    from transformers import AutoConfig

    from sftune.models import _hub_error, resolve_model_path, set_dropout
    from sftune.tasks import get_task

    t = get_task(task)
    kwargs: dict[str, Any] = {"num_labels": t.num_labels}
    if t.label_names:
        kwargs["id2label"] = dict(enumerate(t.label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(t.label_names)}
    if t.num_labels == 1:
        kwargs["problem_type"] = "regression"
    if is_shape(model):
        family, overrides = _shape(model)
        config = AutoConfig.for_model(family, **overrides, **kwargs)
    else:
        path = resolve_model_path(model)
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            err = _hub_error(model, e)
            raise UsageError(f"{err} Built-in shapes need no download: "
                             f"{', '.join(SHAPE_PREFIX + s for s in SHAPES)}.") from None
    if dropout is not None:
        set_dropout(config, dropout)
    return config


def build_model(cell: Cell, config):
    """The classifier of a cell: random weights from `config` (shapes, --random-init), else the checkpoint.
    Call after seeding: random weights and the new head come from the RNG."""
    from transformers import AutoModelForSequenceClassification

    if cell.random_init or is_shape(cell.model):
        return AutoModelForSequenceClassification.from_config(config)
    from sftune.models import resolve_model_path

    return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cell.model), config=config,
                                                              ignore_mismatched_sizes=True)


def synthetic_examples(config, n: int, seq_len: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` examples of exactly `seq_len` random token ids (never the pad id), an all-ones attention mask and a
    random label (a float target for a regression head); batched in order, they give batch x seq_len."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)
    pad = getattr(config, "pad_token_id", None)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    if pad is not None and vocab > 1:
        ids[ids == pad] = (int(pad) + 1) % vocab
    if config.num_labels == 1:
        labels = torch.rand(n, generator=g)
    else:
        labels = torch.randint(0, config.num_labels, (n,), generator=g)
    mask = torch.ones(seq_len, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


# --------------------------------------------------------------------------------------------- config
def split_sets(sets: dict[str, str], methods: list[str]) -> dict[str, dict[str, str]]:
    """Per method, the --set items that apply to it: `method.*` keys go only to the methods having that
    option (an option no chosen method has is an error); other keys go to every method."""
    from sftune.registry import option_names

    own = {m: names | {"mask_mode"} for m, names in option_names(methods).items()}
    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for key, value in sets.items():
        section, _, rest = key.partition(".")
        if section == "method":
            takers = [m for m in methods if rest in own[m]]
            if not takers:
                from sftune.errors import did_you_mean

                every = sorted(set().union(*own.values()))
                raise UsageError(f"--set {key}: none of the methods {', '.join(methods)} has an option "
                                 f"'{rest}'.{did_you_mean(rest, every)}")
            for m in takers:
                out[m][key] = value
        elif section in ("model", "train", "data"):
            for m in methods:
                out[m][key] = value
        else:
            raise UsageError(f"--set {key}: memprofile accepts method.*, model.*, train.* and data.* keys.")
    return out


def run_config(cell: Cell):
    """The RunConfig of a cell (validated by `sftune.config.build`; errors are UsageErrors)."""
    from sftune.config import build
    from sftune.run_tree import training_tree

    options = {"method.mask_mode": cell.mask_mode, "data.max_length": cell.seq_len,
               "train.batch_size": cell.batch_size, "train.max_steps": 2 * cell.steps,
               "train.precision": PRECISIONS[cell.precision], "train.cpu": cell.cpu, "train.seed": cell.seed,
               "train.measure_changed": False, "train.log_every": 10**9, "train.grad_accum": 1}
    base = {"method": dict(PROFILE_METHOD_DEFAULTS.get(cell.method, {}))}
    return build(training_tree(cell.model, cell.task, cell.method, options=options, sets=cell.sets, base=base))


# -------------------------------------------------------------------------------------------- failures
def is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def failure(err: BaseException) -> dict[str, Any]:
    cause = " ".join(f"{type(err).__name__}: {err}".split())
    if len(cause) > 300:
        cause = cause[:297] + "..."
    return {"status": "oom" if is_oom(err) else "error", "error": cause}
