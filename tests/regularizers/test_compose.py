"""Regularisers compose with any method and with each other; contradictory combinations are one-line errors."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sftune.config import build
from sftune.errors import UsageError
from sftune.registry import methods
from sftune.regularizers.llrd import LLRD
from sftune.regularizers.mixout import Mixout


def tree(method="full", *regs, task="rte"):
    return {"model": {"name": "x"}, "task": task, "method": {"name": method}, "regs": list(regs)}


def test_bitfit_with_rdrop_and_llrd_end_to_end(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "composed"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "bitfit",
                          "--reg", "r-drop:alpha=1", "--reg", "llrd:eta=0.9", "--max-steps", "3",
                          "--batch-size", "8", "--set", "data.train_size=24", "--set", "train.log_every=1",
                          "--set", "train.lr=1e-3", "--set", "data.eval_batch_size=128", "-o", out)
    assert code == 0, stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"]["name"] == "bitfit"
    assert config["regs"] == [{"name": "r-drop", "alpha": 1.0, "dropout": 0.1, "reduction": "batchmean"},
                              {"name": "llrd", "eta": 0.9}]
    before, after = load_file(str(tiny_bert / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("bias") or k.startswith("classifier.") for k in changed)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == 3 and all(r["r-drop/kl"] >= 0 for r in train)
    results = json.loads((out / "results.json").read_text())
    assert results["llrd"]["eta"] == 0.9


def test_full_with_mixout_and_llrd_is_recorded():
    cfg = build(tree("full", "mixout:p=0.3", "llrd:eta=0.9"))
    assert cfg.to_dict()["regs"] == [{"name": "mixout", "p": 0.3, "include_head": True, "dropout": 0.0},
                                     {"name": "llrd", "eta": 0.9}]
    assert [r.options for r in cfg.regs] == [Mixout.Options(p=0.3), LLRD.Options(eta=0.9)]


@pytest.mark.parametrize("regs", [("mixout", "r-drop"), ("r-drop", "mixout")])
def test_mixout_and_rdrop_exclude_each_other_in_any_order(regs):
    with pytest.raises(UsageError, match="cannot be combined with"):
        build(tree("full", *regs))


def test_mixout_with_dps_mix_is_an_error():
    if "dps-mix" not in methods():
        pytest.skip("method dps-mix is not registered yet (its teammate's work); mixout declares it incompatible")
    with pytest.raises(UsageError, match="regulariser mixout cannot be combined with dps-mix"):
        build(tree("dps-mix", "mixout:p=0.3"))


def test_reinit_with_frozen_is_an_error():
    with pytest.raises(UsageError, match="regulariser reinit cannot be combined with frozen"):
        build(tree("frozen", "reinit:L=2"))


def test_r3f_on_stsb_is_a_one_line_error_and_writes_nothing(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "r3f-stsb"
    code, _, stderr = cli("train", tiny_bert, "stsb", "--data-dir", glue_dir, "--reg", "r3f", "--max-steps", "1",
                          "--set", "data.train_size=8", "-o", out)
    assert code == 2
    assert "stsb is a regression task" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_option_names_the_regulariser_options():
    with pytest.raises(UsageError, match="Its options: alpha, dropout, reduction"):
        build(tree("full", "r-drop:alpah=1"))
