"""The sparse diff artifact: what training changed, relative to the pre-trained weights.

`diff.safetensors` holds, per tensor that changed, either the flat indices (int32 when they fit) and the new
values of the changed entries (`NAME::indices`, `NAME::values`), or the whole tensor (`NAME`) for the task
head and for tensors where most entries changed (then the dense form is smaller). `diff.json` summarises
density per module group and the bytes saved. `apply_diff` rebuilds the fine-tuned model from the base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sftune.artifacts import atomic_write_json, match_umask
from sftune.models import GROUPS


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Named parameters, tied ones once (BART's shared embeddings)."""
    return {n: p for n, p in model.named_parameters()}


def changed_counts(model: nn.Module, reference: dict[str, torch.Tensor], groups: dict[str, str]) -> dict:
    """Entries that differ from the reference, per group and overall (counts and shares)."""
    per = {g: [0, 0] for g in GROUPS}
    for name, p in parameters(model).items():
        ref = reference[name].to(p.device)
        per[groups[name]][0] += int((p.detach() != ref).sum())
        per[groups[name]][1] += p.numel()
    changed, total = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    out = {"changed": changed, "total": total, "share": changed / max(total, 1), "groups": {}}
    for g, (c, t) in per.items():
        if t:
            out["groups"][g] = {"changed": c, "total": t, "share": c / t}
    return out


def save_diff(model: nn.Module, reference: dict[str, torch.Tensor], groups: dict[str, str], run_path: Path) -> dict:
    tensors: dict[str, torch.Tensor] = {}
    full_bytes = 0
    for name, p in parameters(model).items():
        value = p.detach().cpu().contiguous()
        full_bytes += value.numel() * value.element_size()
        flat, ref = value.reshape(-1), reference[name].cpu().reshape(-1)
        changed = torch.nonzero(flat != ref).squeeze(1)
        if changed.numel() == 0:
            continue
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        sparse_bytes = changed.numel() * (flat.element_size() + torch.tensor([], dtype=index_dtype).element_size())
        if groups[name] == "head" or sparse_bytes >= value.numel() * value.element_size():
            tensors[name] = value
        else:
            tensors[f"{name}::indices"] = changed.to(index_dtype)
            tensors[f"{name}::values"] = flat[changed].clone()
    tmp = run_path / "diff.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "sftune-diff-1"})
    match_umask(tmp)
    tmp.replace(run_path / "diff.safetensors")
    diff_bytes = (run_path / "diff.safetensors").stat().st_size
    summary = {"diff_bytes": diff_bytes, "full_weights_bytes": full_bytes,
               "ratio_full_over_diff": full_bytes / max(diff_bytes, 1),
               "changed": changed_counts(model, reference, groups)}
    atomic_write_json(run_path / "diff.json", summary)
    return summary


def apply_diff(model: nn.Module, path: Path) -> None:
    """Write the diff's values into a freshly loaded base model, in place."""
    tensors = load_file(str(path))
    params = parameters(model)
    with torch.no_grad():
        for key, value in tensors.items():
            if key.endswith("::values"):
                continue
            if key.endswith("::indices"):
                name = key[: -len("::indices")]
                flat = params[name].view(-1)
                flat[value.long().to(flat.device)] = tensors[f"{name}::values"].to(flat.device, flat.dtype)
            else:
                params[key].copy_(value.to(params[key].device, params[key].dtype))


def read_summary(run_path: Path) -> dict:
    return json.loads((run_path / "diff.json").read_text())
