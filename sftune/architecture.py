"""What each module of a transformer is for, found from the module tree rather than from one family's names.

One place answers, for encoders (BERT, RoBERTa, ELECTRA, BART, DeBERTa) and decoders (Llama, Qwen2/Qwen3,
Mistral, GPT-2) alike:

* projections: `nn.Linear` and GPT-2's `Conv1D` (a Linear whose weight is stored [in, out]: `transposed`);
* norms: `nn.LayerNorm` and any `*Norm` module holding only 1-D parameters (LlamaRMSNorm, Qwen2RMSNorm,
  T5LayerNorm...); `norm_kind` tells mean-centred LayerNorm from RMSNorm (weight only);
* the role of every parameter (`parameter_groups`): head, layernorm (RMSNorm included), bias, embeddings,
  attention, ffn, other, checked in that order. A projection's role comes from the modules that contain it:
  an ancestor that is an attention block (class or attribute name with Attention/attn: LlamaAttention,
  GPT2Attention, BertAttention, BART self_attn) or an MLP block (LlamaMLP, GPT2MLP, BertIntermediate/
  BertOutput, BART fc1/fc2). Token and position embeddings are `nn.Embedding` modules; a causal LM's output
  projection (`lm_head`) is an embedding too (pre-trained, not a new task head) and, when it is tied to the
  input embedding, `named_parameters()` lists the shared weight once;
* the layer stack (`layer_stack`): the top-level ModuleLists of identical blocks (BERT `encoder.layer`, BART
  encoder then decoder `layers`, Llama/Qwen/Mistral `model.layers`, GPT-2 `transformer.h`);
* `projection_role` (q, k, v, qkv, o, gate, up, down), `attention_projection_parameters` (what the attention
  method trains) and `adapter_targets` (the attention and MLP projections' leaf names, the default targets of
  adapter methods such as LoRA);
* `output_layer_parameters` (an untied lm_head: layer-wise LR decay puts it at the top) and `inactive_copies`
  (peft's frozen original of a module it trains a copy of: counted once in tables);
* `final_norms`: the norms outside the stack that run on the top layer's output (Llama/Qwen/Mistral
  `model.norm`, GPT-2 `transformer.ln_f`), found by running the layers once, since the order modules are
  registered in is not the order they run in (BART registers `layernorm_embedding` after `layers`).
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

GROUPS = ("embeddings", "attention", "ffn", "layernorm", "bias", "other", "head")

_ATTENTION = re.compile(r"attention|attn", re.I)
_FFN = re.compile(r"mlp|feed_?forward|ffn|intermediate|^fc\d$|^output$", re.I)


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers without Conv1D: only nn.Linear projections
        return ()
    return (Conv1D,)


PROJECTIONS = (nn.Linear, *_conv1d_type())


# ------------------------------------------------------------------------------------------ module kinds
def is_projection(module: nn.Module) -> bool:
    """A Linear-like layer: nn.Linear, or GPT-2's Conv1D (y = x W + b with W stored [in, out])."""
    return isinstance(module, PROJECTIONS)


def transposed(module: nn.Module) -> bool:
    """True when the weight is stored [in_features, out_features] (Conv1D), not nn.Linear's [out, in]."""
    return is_projection(module) and not isinstance(module, nn.Linear)


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if transposed(module) else module.weight.shape[1]


def is_norm(module: nn.Module) -> bool:
    """nn.LayerNorm, or a module whose class name contains 'Norm' and that holds only 1-D parameters,
    a weight among them (RMSNorm classes of Llama, Qwen, Mistral; T5LayerNorm)."""
    if isinstance(module, nn.LayerNorm):
        return module.weight is not None
    if "norm" not in type(module).__name__.lower() or isinstance(module, nn.modules.batchnorm._NormBase):
        return False
    own = dict(module.named_parameters(recurse=False))
    return isinstance(own.get("weight"), nn.Parameter) and all(p.dim() == 1 for p in own.values())


def norm_kind(module: nn.Module) -> str:
    """'layernorm' (centred, usually with a bias) or 'rmsnorm' (x / rms(x), weight only)."""
    if isinstance(module, nn.LayerNorm) or getattr(module, "bias", None) is not None:
        return "layernorm"
    return "rmsnorm"


def norm_eps(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, float):
            return value
    return 1e-6


def projections(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear-like module by name."""
    return {n: m for n, m in model.named_modules() if is_projection(m)}


def norms(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_norm(m)}


def projection_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight of every Linear-like module, by the name named_parameters() gives it (a shared weight,
    e.g. a tied lm_head, once)."""
    ids = {id(m.weight) for m in projections(model).values()}
    return {n: p for n, p in model.named_parameters() if id(p) in ids}


def transposed_weights(model: nn.Module) -> set[str]:
    """Parameter names of weights stored [in, out] (Conv1D)."""
    ids = {id(m.weight) for m in projections(model).values() if transposed(m)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ------------------------------------------------------------------------------------------------ heads
def output_embedding(model: nn.Module) -> nn.Module | None:
    """A generative model's output projection (lm_head), which is pre-trained: an embedding, not a task head."""
    can_generate = getattr(model, "can_generate", None)
    if not callable(can_generate) or not can_generate():
        return None
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def output_layer_parameters(model: nn.Module) -> set[str]:
    """Parameter names listed under a causal LM's output projection: an untied lm_head's weight. A tied lm_head
    shares the input embedding's tensor, which named_parameters() lists once, under the input embedding: none."""
    out = output_embedding(model)
    if out is None:
        return set()
    prefixes = tuple(f"{n}." for n, m in model.named_modules() if m is out and n)
    return {n for n, _ in model.named_parameters() if prefixes and n.startswith(prefixes)}


def inactive_copies(model: nn.Module) -> set[str]:
    """Parameter names of frozen originals that a wrapper keeps beside the copy it trains and runs: peft's
    modules_to_save (LoRA's task head) holds `classifier.original_module.*` and `classifier.modules_to_save.
    default.*`; only the latter is part of the model being trained, so tables count it alone."""
    wrappers = [n for n, m in model.named_modules()  # read _modules: peft's __getattr__ forwards to the copy
                if isinstance(m._modules.get("modules_to_save"), nn.ModuleDict)
                and m._modules.get("original_module") is not None]
    prefixes = tuple(f"{n}.original_module." if n else "original_module." for n in wrappers)
    return {n for n, _ in model.named_parameters() if prefixes and n.startswith(prefixes)}


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameters outside the pre-trained base model form the task head (BERT: classifier; RoBERTa/ELECTRA:
    classifier.*; BART: classification_head.*; DeBERTa: pooler + classifier; Llama/GPT-2: score). A causal
    LM's lm_head is pre-trained and not a head."""
    base = getattr(model, "base_model_prefix", "")
    out = output_embedding(model)
    lm = {n.split(".", 1)[0] for n, m in model.named_modules() if m is out and n} if out is not None else set()
    names = {n.split(".", 1)[0] for n, _ in model.named_parameters()}
    return tuple(sorted(n + "." for n in names if n != base and n not in lm))


# ------------------------------------------------------------------------------------------------ roles
def module_roles(model: nn.Module) -> dict[str, str]:
    """Module name -> 'attention', 'ffn' or 'other' for every module, from its ancestors (outermost first)."""
    roles: dict[str, str] = {}
    paths: dict[str, list[tuple[str, nn.Module]]] = {"": []}
    for name, module in model.named_modules():
        if name:
            parent, _, local = name.rpartition(".")
            paths[name] = paths[parent] + [(local, module)]
        roles[name] = _role_from_path(paths[name])
    return roles


def _role_from_path(path: list[tuple[str, nn.Module]]) -> str:
    # Attention wins over FFN anywhere on the path (BertSelfOutput's dense sits in BertAttention; BertOutput
    # in the layer is the FFN's second projection).
    for local, module in path:
        if _ATTENTION.search(type(module).__name__) or _ATTENTION.search(local):
            return "attention"
    for local, module in path:
        if _FFN.search(local) or _FFN.search(type(module).__name__.replace("SelfOutput", "")):
            return "ffn"
    return "other"


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Parameter name -> group, checked in this order: head, layernorm (LayerNorm and RMSNorm), bias,
    embeddings, attention, ffn, other."""
    heads = head_prefixes(model)
    roles = module_roles(model)
    modules = dict(model.named_modules())
    out_emb = output_embedding(model)
    out = {}
    for name, _ in model.named_parameters():
        owner_name = name.rpartition(".")[0]
        owner = modules.get(owner_name)
        low = name.lower()
        if name.startswith(heads):
            group = "head"
        elif is_norm(owner) or "layernorm" in low or "layer_norm" in low:
            group = "layernorm"
        elif low.endswith("bias"):
            group = "bias"
        elif isinstance(owner, nn.Embedding) or owner is out_emb or "embed" in low:
            group = "embeddings"
        else:
            role = roles.get(owner_name, "other")
            group = role if role in ("attention", "ffn") else "other"
        out[name] = group
    return out


# ------------------------------------------------------------------------------------------ layer stack
def layer_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer layers, bottom to top, as (module name, module): every ModuleList of blocks of one
    class that holds an attention block, not nested in another such list, in module order (BART: the
    encoder's layers, then the decoder's). Empty when the model has none (ALBERT shares one layer)."""
    roles = module_roles(model)
    stack: list[tuple[str, nn.Module]] = []
    lists: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(outer + ".") for outer in lists):
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        first = f"{name}.0"
        if not any(roles.get(n) == "attention" for n in roles if n.startswith(first + ".")):
            continue
        lists.append(name)
        stack += [(f"{name}.{i}", child) for i, child in enumerate(module)]
    return stack


# ---------------------------------------------------------------------------------- projection roles
_LEAF_ROLES = {
    "q_proj": "q", "query": "q", "query_proj": "q", "q": "q", "wq": "q",
    "k_proj": "k", "key": "k", "key_proj": "k", "k": "k", "wk": "k",
    "v_proj": "v", "value": "v", "value_proj": "v", "v": "v", "wv": "v",
    "c_attn": "qkv", "qkv_proj": "qkv", "query_key_value": "qkv", "Wqkv": "qkv", "in_proj": "qkv",
    "o_proj": "o", "out_proj": "o", "dense": "o", "wo": "o", "o": "o",
    "gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "c_fc": "up", "fc1": "up",
    "down_proj": "down", "w2": "down", "fc2": "down",
}


def projection_role(name: str, role: str) -> str | None:
    """q / k / v / qkv / o for attention projections, gate / up / down for MLP projections, from the leaf name
    and the block it sits in (GPT-2's c_proj is o in the attention block and down in the MLP)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "c_proj":
        return "o" if role == "attention" else "down" if role == "ffn" else None
    if leaf == "dense" and role == "ffn":  # BertIntermediate.dense / BertOutput.dense
        return "up" if ".intermediate." in f".{name}." else "down"
    found = _LEAF_ROLES.get(leaf)
    if found in ("q", "k", "v", "qkv", "o"):
        return found if role == "attention" else None
    if found in ("gate", "up", "down"):
        return found if role == "ffn" else None
    return None


def projection_roles(model: nn.Module) -> dict[str, str]:
    """Module name -> q/k/v/qkv/o/gate/up/down for every projection inside the layer stack that has one."""
    roles = module_roles(model)
    inside = tuple(f"{n}." for n, _ in layer_stack(model))
    out = {}
    for name in projections(model):
        if inside and not name.startswith(inside):
            continue
        found = projection_role(name, roles.get(name, "other"))
        if found:
            out[name] = found
    return out


ATTENTION_ROLES = ("q", "k", "v", "qkv", "o")


def attention_projection_parameters(model: nn.Module) -> set[str]:
    """Parameter names (weights and biases) of the attention projections (q/k/v/qkv/o) of every layer: BERT
    query/key/value/attention.output.dense, Llama q/k/v/o_proj, GPT-2 attn.c_attn and attn.c_proj."""
    modules = {name for name, role in projection_roles(model).items() if role in ATTENTION_ROLES}
    return {n for n, _ in model.named_parameters() if n.rpartition(".")[0] in modules}


def adapter_targets(model: nn.Module) -> list[str]:
    """Leaf names of the attention and MLP projections (LoRA's default targets): Llama/Qwen/Mistral
    q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2 c_attn, c_proj, c_fc."""
    return sorted({name.rsplit(".", 1)[-1] for name in projection_roles(model)})


def _base_model_of(model: nn.Module, stack: list[tuple[str, nn.Module]]) -> nn.Module:
    """The innermost transformers model that holds every layer of the stack (LlamaModel, GPT2Model, BertModel,
    BartModel: one that takes input_ids and has no task head), else `model` itself."""
    from transformers import PreTrainedModel

    names = [n.split(".") for n, _ in stack]
    common = []
    for parts in zip(*names):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    modules = dict(model.named_modules())
    for i in range(len(common), 0, -1):
        candidate = modules.get(".".join(common[:i]))
        if isinstance(candidate, PreTrainedModel):
            return candidate
    return model


def final_norms(model: nn.Module) -> list[str]:
    """Module names of the norms outside the layer stack that run only after its top layer has run: a decoder's
    final norm, applied to the top layer's output (Llama/Qwen/Mistral `model.norm`, GPT-2 `transformer.ln_f`,
    mBART's `decoder.layer_norm`). Found from one forward pass of two tokens through the base model (eval mode, no
    gradients: no dropout draw, nothing learnt), because registration order is not execution order: BART
    registers `layernorm_embedding` after `layers` but runs it before them, and BERT/ELECTRA/DeBERTa have no such
    norm. Empty when there is no stack, or (with a warning) when the base model cannot run on bare input_ids."""
    stack = layer_stack(model)
    if not stack:
        return []
    inside = tuple(f"{n}." for n, _ in stack)
    candidates = {n: m for n, m in norms(model).items() if not n.startswith(inside)}
    if not candidates:
        return []
    base = _base_model_of(model, stack)
    top_ran = [False]
    before: set[str] = set()
    after: set[str] = set()

    def on_top(module, inputs, output):
        top_ran[0] = True

    def on_norm(name):
        def hook(module, inputs, output):
            (after if top_ran[0] else before).add(name)
        return hook

    handles = [stack[-1][1].register_forward_hook(on_top)]
    handles += [m.register_forward_hook(on_norm(n)) for n, m in candidates.items()]
    modes = {m: m.training for m in base.modules()}
    device = next(base.parameters()).device
    try:
        base.eval()
        with torch.no_grad():
            ids = torch.zeros((1, 2), dtype=torch.long, device=device)
            base(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as exc:  # noqa: BLE001 - a base model that needs more than input_ids: no final norm found
        # Said, not silent: llrd then trains these norms at the embeddings' rate, which a user may not expect.
        warnings.warn(f"could not run {type(base).__name__} on input_ids alone ({type(exc).__name__}: {exc}), so "
                      f"whether {', '.join(sorted(candidates))} run after its top layer is unknown: treated as not "
                      "(llrd gives them the embeddings' rate)", stacklevel=2)
        return []
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return sorted(after - before)
