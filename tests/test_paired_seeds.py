"""Paired seeds: runs with the same seed share the training subset, the held-out split, the data order and
the new head's initial weights whatever the method, so a per-seed difference between methods is paired."""

import pytest
import torch

from sftune.config import build
from sftune.data import HELDOUT
from sftune.engine.loop import Trainer


def _built(model, glue_dir, method, seed):
    tree = {"model": {"name": str(model)}, "task": "rte", "method": {"name": method, "mask_mode": "grad"},
            "data": {"data_dir": str(glue_dir), "train_size": 40, "stratified": True,
                     "validation_from_train": 30, "eval_batch_size": 128},
            "train": {"max_steps": 2, "batch_size": 8, "seed": seed}}
    trainer = Trainer(build(tree))
    trainer.build()
    head = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "classifier" in n}
    order = [batch["input_ids"].clone() for _, batch in zip(range(3), trainer.train_loader)]
    return trainer, head, order


@pytest.fixture(scope="module")
def encoder_only(tiny_bert, tmp_path_factory):
    """The tiny BERT without its classifier, so the head is new and drawn from the seed (as MiniLM's is)."""
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("encoder")
    AutoModel.from_pretrained(tiny_bert).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return out


def test_same_seed_same_data_order_and_head_across_methods(encoder_only, glue_dir):
    tiny_bert = encoder_only
    base, head, order = _built(tiny_bert, glue_dir, "full", seed=5)
    held = base.splits.evals[HELDOUT]["idx"]
    assert len(held) == 30 and not set(held) & set(base.train_set["idx"])
    assert list(base.eval_sets) == ["validation", HELDOUT]  # dev stays the first (main) split
    for method in ("bitfit", "dps-mix", "child-tuning-f"):
        other, head_o, order_o = _built(tiny_bert, glue_dir, method, seed=5)
        assert other.train_set["idx"] == base.train_set["idx"] and other.splits.evals[HELDOUT]["idx"] == held
        assert head_o.keys() == head.keys() and all(torch.equal(head[k], head_o[k]) for k in head)
        assert all(torch.equal(a, b) for a, b in zip(order, order_o))
    other, head_o, order_o = _built(tiny_bert, glue_dir, "full", seed=6)  # another seed: another draw
    assert other.splits.evals[HELDOUT]["idx"] == held  # the held-out rows do not depend on the run's seed
    assert other.train_set["idx"] != base.train_set["idx"]
    assert not all(torch.equal(head[k], head_o[k]) for k in head)
