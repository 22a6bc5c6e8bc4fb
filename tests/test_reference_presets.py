"""Presets that reproduce a reference script: the values written by hand from the scripts, and what a run built
from them does (DPS's per-method dropout and low-resource stage length, Child-Tuning's missing warmup, BitFit's
optimizer)."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "methods"))
from helpers import make_trainer  # noqa: E402

from sftune.config import build  # noqa: E402
from sftune.presets import load_preset  # noqa: E402


# ------------------------------------------------------------------------------------- values by hand
def test_child_tuning_preset_is_its_run_script():
    # PKUnlp-icler/ChildTuning run.sh (BSZ 16, LR 4e-5, 3 epochs, wd 0.01, length 128, reserve_p 0.3) with the
    # transformers Trainer defaults (eps 1e-8, clip 1.0, linear); warmup 0: ChildTuningD.py/F.py hand the
    # scheduler args.warmup_steps, never warmup_ratio.
    for method in ("child-tuning-d", "child-tuning-f"):
        tree = load_preset("child-tuning").for_task("rte", method)
        assert tree["train"] == {"batch_size": 16, "lr": 4e-5, "epochs": 3, "warmup_ratio": 0.0, "warmup_steps": 0,
                                 "weight_decay": 0.01, "max_grad_norm": 1.0, "scheduler": "linear",
                                 "adam_eps": 1e-8}
        assert tree["method"] == {"p": 0.3} and tree["data"] == {"max_length": 128}


def test_bitfit_preset_is_its_reference_code():
    # benzakenelad/BitFit run_glue.py defaults (lr 1e-3, 16 epochs, batch 8, length 128) and glue_evaluator.py:
    # transformers AdamW(lr, correct_bias=True): eps 1e-6, weight decay 0; no scheduler; clip 1.0.
    tree = load_preset("bitfit").for_task("rte", "bitfit")
    assert tree["train"] == {"batch_size": 8, "lr": 1e-3, "epochs": 16, "warmup_ratio": 0.0, "warmup_steps": 0,
                             "weight_decay": 0.0, "max_grad_norm": 1.0, "scheduler": "constant", "adam_eps": 1e-6}
    assert "method" not in tree


def test_every_reference_preset_names_what_it_follows():
    follows = {name: load_preset(name).follows for name in ("dps", "child-tuning", "bitfit")}
    assert "ZhangHaojie077/DPS" in follows["dps"] and "run_trainer.py" in follows["dps"]
    assert "PKUnlp-icler/ChildTuning" in follows["child-tuning"]
    assert "benzakenelad/BitFit" in follows["bitfit"]


def test_dps_preset_sets_dropout_only_for_dps_methods_in_a_sweep():
    """`--preset dps --method full,dps-mix,dps-dense`: vanilla keeps the model's dropout (run_trainer.py:345-356
    changes the config only for dense/mix)."""
    from sftune.sweep import expand, make_spec

    runs = expand(make_spec({"model": "minilm", "task": "rte", "preset": "dps",
                             "method": ["full,dps-mix,dps-dense"], "seeds": 1}))
    by_method = {r.method: r.config for r in runs}
    assert by_method["full"]["model"]["dropout"] is None
    assert set(by_method["full"]["method"]) == {"name", "mask_mode"}
    for m in ("dps-mix", "dps-dense"):
        method = by_method[m]["method"]
        assert by_method[m]["model"]["dropout"] is None  # the method applies the script's rule itself
        assert (method["dropout_rule"], method["stage_steps"], method["gam_dtype"]) == ("reference", "reference",
                                                                                         "float32")
        assert (method["p"], method["ur"]) == (0.3, 0.05)
    assert all(c["train"]["lr"] == 2e-5 and c["train"]["batch_size"] == 16 for c in by_method.values())


# --------------------------------------------------------------------------------------- runs built
def _dropouts(model) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


@pytest.mark.parametrize("size,reference_u,run_u", [(500, 1, 4), (1000, 3, 9)])
def test_dps_low_resource_stage_length_by_hand(tiny_bert, glue_dir, size, reference_u, run_u):
    # run_trainer.py:359-360: config.max_steps = ceil(size / 16) while training 3 epochs; U = int(that * 0.05).
    assert reference_u == int(math.ceil(size / 16) * 0.05) and run_u == int(3 * math.ceil(size / 16) * 0.05)
    common = dict(steps=None, data__train_size=size, train__batch_size=16, train__epochs=3, method__ur=0.05)
    reference = make_trainer(tiny_bert, glue_dir, "dps-dense", method__stage_steps="reference", **common)
    default = make_trainer(tiny_bert, glue_dir, "dps-dense", **common)
    assert reference.total_steps == default.total_steps == 3 * math.ceil(size / 16)
    assert (reference.method.U, default.method.U) == (reference_u, run_u)


@pytest.mark.parametrize("method,max_steps,train_size,expected", [
    ("dps-mix", 2000, None, 0.0),      # mix: always 0
    ("dps-dense", 1999, None, 0.0),    # dense: 0 below 2000 script steps
    ("dps-dense", 2000, None, 0.1),    # ... and 0.1 from 2000 on (full SST-2, QNLI, QQP, MNLI)
    ("dps-dense", 5000, 500, 0.0),     # low-resource: the script's steps are one epoch's, ceil(500/16) = 32
])
def test_dps_reference_dropout_rule(tiny_bert, glue_dir, method, max_steps, train_size, expected):
    trainer = make_trainer(tiny_bert, glue_dir, method, steps=max_steps, data__train_size=train_size,
                           train__batch_size=16, method__dropout_rule="reference", model__dropout=0.3)
    assert _dropouts(trainer.model) == {expected}
    assert trainer.model.config.hidden_dropout_prob == expected
    if expected == 0.0:  # no dropout anywhere (attention's included): a train-mode forward is the eval one
        batch = {k: v for k, v in next(iter(trainer.method.ctx.train_loader)).items() if k != "idx"}
        model = trainer.model
        with torch.no_grad():
            model.train()
            a = model(**batch).logits
            model.eval()
            b = model(**batch).logits
        assert torch.allclose(a, b, atol=1e-6)


def test_vanilla_under_the_dps_preset_keeps_the_models_dropout(tiny_bert, glue_dir):
    from sftune.engine.loop import Trainer
    from sftune.run_tree import training_tree

    options = {"data.data_dir": str(glue_dir), "data.train_size": 32, "train.max_steps": 2}
    full = Trainer(build(training_tree(str(tiny_bert), "rte", "full", preset="dps", options=options)))
    full.build()
    mix = Trainer(build(training_tree(str(tiny_bert), "rte", "dps-mix", preset="dps", options=options)))
    mix.build()
    assert _dropouts(full.model) == {0.1} and _dropouts(mix.model) == {0.0}


def _preset_trainer(tiny_bert, glue_dir, method, preset, steps):
    from sftune.engine.loop import Trainer
    from sftune.run_tree import training_tree

    options = {"data.data_dir": str(glue_dir), "data.train_size": 64, "train.max_steps": steps}
    trainer = Trainer(build(training_tree(str(tiny_bert), "rte", method, preset=preset, options=options)))
    trainer.build()
    return trainer


def test_child_tuning_preset_has_no_warmup(tiny_bert, glue_dir):
    trainer = _preset_trainer(tiny_bert, glue_dir, "child-tuning-f", "child-tuning", 10)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(4e-5)  # warmup would start at 0
    trainer.optimizer.step()
    trainer.scheduler.step()
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(4e-5 * 9 / 10)  # linear decay from step 1


def test_bitfit_preset_decays_nothing_and_keeps_the_lr(tiny_bert, glue_dir):
    trainer = _preset_trainer(tiny_bert, glue_dir, "bitfit", "bitfit", 4)
    groups = trainer.optimizer.param_groups
    names = [n for g in groups for n in g["names"]]
    assert "classifier.weight" in names  # the head weight trains, and is not decayed either
    assert all(g["weight_decay"] == 0.0 and g["eps"] == 1e-6 for g in groups)
    lrs = []
    for _ in range(3):
        trainer.optimizer.step()
        trainer.scheduler.step()
        lrs.append(trainer.scheduler.get_last_lr()[0])
    assert lrs == [1e-3] * 3


def test_a_preset_method_section_names_a_known_method(tmp_path):
    from sftune.errors import UsageError

    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  dps-mixx: {method: {p: 0.2}}\n")
    with pytest.raises(UsageError, match="unknown method .*'dps-mixx'.*Did you mean 'dps-mix'"):
        load_preset(str(bad))
