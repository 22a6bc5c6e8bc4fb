"""Plug-in options are declared (`sftune.options.option` with bounds and choices, `check()` across fields) and
validated when the configuration is built: every bad option is reported at once, exit 2, before a model is
loaded or a sweep starts a run; the options module is a leaf (no registry, no config)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import transformers

from sftune.config import build
from sftune.errors import UsageError
from sftune.options import MethodChoice, PluginChoice, option, option_errors, validate

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _Toy:
    share: float = option(0.5, "a share", gt=0, le=1)
    count: int | None = option(None, "a count", ge=1)
    rate: float = option(0.1, "a rate", ge=0, lt=1)
    rule: str = option("a", "a rule", choices=("a", "b"))
    low: float = option(0.0, "bounded below only", gt=0.5)
    high: int = option(0, "bounded above only", le=3)

    def check(self) -> list[str]:
        return ["count and a share below 1 exclude each other"] if self.count and self.share < 1 else []


def test_declared_bounds_and_choices_are_checked_with_their_words():
    assert option_errors(_Toy(low=1.0), "method") == []
    errors = option_errors(_Toy(share=0, count=0, rate=1.0, rule="c", low=0.5, high=4), "method")
    assert errors == ["method.share must be in (0, 1], got 0",
                      "method.count must be at least 1, got 0",
                      "method.rate must be in [0, 1), got 1.0",
                      "method.rule: expected one of a, b, got 'c'",
                      "method.low must be greater than 0.5, got 0.5",
                      "method.high must be at most 3, got 4"]


def test_check_adds_rules_across_fields_and_validate_raises_them_all():
    assert option_errors(_Toy(count=2, share=0.5, low=1.0), "reg toy") == [
        "reg toy: count and a share below 1 exclude each other"]
    with pytest.raises(UsageError, match=r"toy\.rate must be in \[0, 1\), got 2.*toy: count and a share"):
        validate(_Toy(rate=2, count=3, share=0.5, low=1.0), "toy")


def test_choices_hold_the_options_and_keep_the_config_yaml_shape():
    cfg = build({"model": {"name": "x"}, "task": "rte", "regs": ["r-drop:alpha=0.5"],
                 "method": {"ur": "0.1", "name": "dps-mix", "p": "0.2", "mask_mode": "update"}})
    assert isinstance(cfg.method, MethodChoice) and (cfg.method.name, cfg.method.mask_mode) == ("dps-mix", "update")
    assert (cfg.method.options.p, cfg.method.options.ur) == (0.2, 0.1)
    assert isinstance(cfg.regs[0], PluginChoice) and cfg.regs[0].options.alpha == 0.5
    method = cfg.to_dict()["method"]
    assert list(method)[:4] == ["name", "mask_mode", "p", "ur"] and method["gam_dtype"] == "bfloat16"
    assert build(cfg.to_dict()).to_dict() == cfg.to_dict()  # what resume and the sweep compare


@pytest.mark.parametrize("method,sets,fragments", [
    ("dps-mix", ["method.p=1.5", "method.ur=0"], ["method.p must be in [0, 1), got 1.5",
                                                  "method.ur must be in (0, 1], got 0.0"]),
    ("child-tuning-f", ["method.p=0"], ["method.p must be in (0, 1], got 0.0"]),
    ("random", ["method.k=3", "method.density=0.1"], ["set one of method.k, method.density and method.lora_rank"]),
    ("lora", ["method.rank=0", "method.dropout=1"], ["method.rank must be at least 1, got 0",
                                                     "method.dropout must be in [0, 1), got 1.0"]),
])
def test_bad_options_fail_together_before_the_model_loads(cli, tiny_bert, tmp_path, monkeypatch, method, sets,
                                                          fragments):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the options were checked")

    for auto in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel,
                 transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(auto, "from_pretrained", no_loading)
    args = [a for s in sets for a in ("--set", s)]
    code, _, stderr = cli("train", tiny_bert, "rte", "--method", method, *args, "--reg", "llrd:eta=0",
                          "-o", tmp_path / "r")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in [*fragments, "reg llrd.eta must be in (0, 1], got 0.0"]:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", [("--set", "method.p=1.5"), ("--grid", "method.p=0.3,1.5")])
def test_a_sweep_with_a_bad_method_option_fails_before_any_run(cli, tiny_bert, tmp_path, where):
    out = tmp_path / "sweep"
    code, _, stderr = cli("sweep", tiny_bert, "rte", "--method", "full,dps-mix", *where, "--seeds", "1",
                          "-o", out)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert "method.p must be in [0, 1), got 1.5" in lines[0]
    assert not out.exists()  # no run directory, no sweep state


def test_the_options_module_is_a_leaf_and_methods_need_no_config():
    code = ("import sys, sftune.options\n"
            "print(sorted(m for m in sys.modules if m.startswith('sftune')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['sftune', 'sftune.errors', 'sftune.options']"
    # The methods declare their options without the configuration: config -> registry -> methods is no cycle.
    code = ("import sys, sftune.registry as r\n"
            "r.methods()\n"
            "print('sftune.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
