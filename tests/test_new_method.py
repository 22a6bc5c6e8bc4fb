""""A new selector is one file plus one test": a toy selector registered from a temporary module shows up in
--method (help and validation, and it trains), `sftune methods`, the docs table (as `write_methods_table` writes
it), the memory estimate (through its own `state_estimate`), every benchmark script's default method list and
the quality profiles' sweeps, with no other file edited."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import load_bench
from sftune import registry

ROOT = Path(__file__).resolve().parents[1]
NAME = "toy-selector"
TOY = '''
from dataclasses import dataclass

import torch

from sftune.options import option
from sftune.methods.masking import MaskedMethod
from sftune.registry import register


@register
class ToySelector(MaskedMethod):
    name = "toy-selector"
    summary = "Toy: keeps one entry in `stride` of each matrix's gradient."

    @dataclass
    class Options:
        stride: int = option(2, "Keep one entry in this many.")

    def candidate(self, name, param):
        return param.dim() == 2 and "embeddings" not in name

    def select(self, step):
        return {n: (torch.arange(p.numel(), device=p.device) % self.options.stride == 0).view(p.shape)
                for n, p in self.candidates.items()}

    def state_estimate(self, mask_mode, flat_grads):
        return {"toy_masks": self.masked_numel()}
'''


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy_selector_module.py").write_text(TOY)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("toy_selector_module")
        yield module.ToySelector
    finally:
        registry._METHODS.pop(NAME, None)
        sys.modules.pop("toy_selector_module", None)
        sys.path.remove(str(tmp_path))


def _bench(relative: str):
    return load_bench(relative)


def test_a_selector_in_one_file_is_everywhere(toy, cli, tiny_bert, glue_dir, tmp_path):
    from sftune.cli.catalog import methods_markdown
    from sftune.cli.options import method_help

    assert NAME in method_help()  # --method's help text
    code, out, err = cli("methods", "--format", "json")
    assert code == 0, err
    (doc,) = [m for m in json.loads(out) if m["name"] == NAME]
    assert [o["name"] for o in doc["options"]] == ["stride"]
    assert f"| `{NAME}` | method |" in methods_markdown()
    from sftune.cli.catalog import write_methods_table

    doc_copy = tmp_path / "methods.md"
    shutil.copy(ROOT / "docs" / "methods.md", doc_copy)
    write_methods_table(str(doc_copy))  # the command tests/test_docs.py asks to run after adding a method
    (row,) = [line for line in doc_copy.read_text().splitlines() if line.startswith(f"| `{NAME}` |")]
    assert "`stride` (2)" in row

    # It trains: validation accepts it and its option, the loop runs its selection.
    run = tmp_path / "run"
    code, _, err = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", NAME, "--set", "method.stride=3",
                       "--max-steps", "2", "--batch-size", "8", "--set", "data.train_size=16",
                       "--set", "data.eval_batch_size=128", "--set", "train.log_every=1", "-o", run)
    assert code == 0, err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    sizes = {n: (p.numel(), p.dim() == 2 and "embeddings" not in n) for n, p in model.named_parameters()}
    kept = sum(-(-n // 3) if masked else n for n, masked in sizes.values())  # ceil(n / 3) of each matrix
    shares = [r["selected"] for r in records if r["type"] == "train"]
    assert shares == pytest.approx([kept / sum(n for n, _ in sizes.values())] * 2)
    code, _, err = cli("train", tiny_bert, "rte", "--method", NAME, "--set", "method.strides=3", "--dry-run")
    assert code == 2 and "strides" in err  # its options are validated like any method's

    # The estimate takes the method's own state_estimate: no name of a method in the profiler.
    code, out, err = cli("memprofile", tiny_bert, "--methods", NAME, "--batch-sizes", "2", "--seq-len", "16",
                         "--estimate", "--format", "json")
    assert code == 0, err
    (cell,) = json.loads(out)["cells"]
    assert cell["method_state_how"] == "estimated" and cell["method_state_detail"] == {"toy_masks": cell["candidates"]}
    assert cell["candidates"] > 0 and cell["parts"]["method_state"] == cell["candidates"]

    # The benchmarks' default lists come from the registry, and each script's main() runs that list (not one
    # of its own) when --methods is not given.
    for script in ("step_share.py", "step_time.py", "methods_minilm.py", "selection_ops.py", "gpu/smoke.py"):
        module = _bench(script)
        assert NAME in module.default_methods(), script
        assert "default_methods()" in inspect.getsource(module.main), script
    assert "full" not in _bench("selection_ops.py").default_methods()  # only the per-step selectors

    # The quality benchmark's profiles run it too: in their `other` group (methods: rest), after their own.
    quality = _bench("quality/run.py")
    import staged  # next to run.py, which put its folder on sys.path

    for name in ("cpu", "gpu"):
        _, profile = quality.load_profile(name)
        assert profile["groups"]["other"]["methods"] == [NAME], name
        sweeps = quality.sweep_commands(profile, tmp_path, None, None)
        assert {s["key"].rsplit("/", 1)[1] for s in sweeps if NAME in s["cmd"]} == {"other"}, name
        one_task = dict(profile, tasks={"rte": {}})  # the report's majority row reads each task's data
        assert f"| {NAME} |" in quality.report(name, one_task, tmp_path, str(glue_dir), [name])
    _, long = quality.load_profile("cpu-long")
    assert long["waves"][-1] == [NAME] and staged.group_of(long, NAME)["lr_grid"]
    assert [c for c in staged.cells(long, None) if NAME in c[2]] == [("main", t, [NAME]) for t in long["tasks"]]


def test_the_toy_is_gone_afterwards():
    assert NAME not in registry.methods()
