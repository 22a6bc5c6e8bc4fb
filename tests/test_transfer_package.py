"""The transfer package's seams: the source model runs through the Trainer's evaluation path (checked against a
forward pass written here with transformers directly), and Hub targets go through sftune.data's Hub loader."""

from __future__ import annotations

import pytest
import torch

from sftune.errors import UsageError

PAIRS = [("A man is playing a guitar.", "A person plays an instrument."),
         ("The cat sleeps on the mat in the afternoon sun.", "A dog runs."),
         ("Two children are reading.", "Nobody is reading a book in the library today.")]


def make_run(tiny_bert, root, eval_batch_size: int = 2):
    """A run directory as `sftune transfer` reuses one: model/ with a 3-way MNLI head of its own (not the
    pre-trained directory's), config.yaml naming the task. Returns (run, the head's model in eval mode, tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sftune.artifacts import RunDir
    from sftune.config import build, dump_yaml

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3,
                                                               ignore_mismatched_sizes=True).eval()
    run = RunDir(root / "run")
    model.save_pretrained(run.model)
    tokenizer.save_pretrained(run.model)
    cfg = build({"task": "mnli", "method": {"name": "full"}, "model": {"name": str(tiny_bert)},
                 "data": {"eval_batch_size": eval_batch_size, "max_length": 24}, "train": {"cpu": True}})
    run.config.write_text(dump_yaml(cfg.to_dict()))
    return run, model, tokenizer


def test_source_model_gives_the_softmax_of_a_plain_forward_pass(tiny_bert, tmp_path):
    """The target rows batched two at a time (so one batch is padded) must give, row for row and in row order,
    the probabilities of an unpadded one-row forward pass written here with transformers directly."""
    import datasets

    from sftune.run import stored_config
    from sftune.transfer.source_model import SourceModel

    run, model, tokenizer = make_run(tiny_bert, tmp_path)
    rows = datasets.Dataset.from_dict({"idx": [7, 0, 3], "text_a": [a for a, _ in PAIRS],
                                       "text_b": [b for _, b in PAIRS], "label": [0, 1, 1]})

    source = SourceModel(run, stored_config(run), {"mine": rows})
    source.build(need_train=False)
    idx, probs = source.probabilities("mine")

    assert idx == [7, 0, 3] and probs.dtype == torch.float32 and probs.shape == (3, 3)
    with torch.no_grad():
        for k, (a, b) in enumerate(PAIRS):
            enc = tokenizer(a, b, truncation="longest_first", max_length=24, return_tensors="pt")
            expected = torch.softmax(model(**enc).logits[0].float(), -1)
            assert torch.allclose(probs[k], expected, atol=1e-5), (k, probs[k], expected)


def test_hub_target_uses_the_parquet_conversion_and_words_the_first_error(monkeypatch):
    import datasets

    from sftune.transfer import load_target, parse_targets

    calls = []
    rows = {"sentence_A": ["a man plays", "a dog runs", "x"], "sentence_B": ["a person plays", "a cat sleeps", "y"],
            "label": [0, 2, -1]}

    def parquet_only(name, config=None, split=None, **kwargs):
        calls.append((name, split, kwargs.get("revision")))
        if kwargs.get("revision") != "refs/convert/parquet":
            raise RuntimeError("Dataset scripts are no longer supported")
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", parquet_only)
    (spec,) = parse_targets(["sick"], None, None)
    target = load_target(spec, None)
    assert calls == [("RobZamp/sick", "test", None), ("RobZamp/sick", "test", "refs/convert/parquet")]
    assert target.dataset["label"] == [0, 2] and target.dropped == 1 and target.origin["kind"] == "hub"

    def offline(name, config=None, split=None, **kwargs):
        raise (ConnectionError if kwargs.get("revision") is None else FileNotFoundError)("no network\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError) as e:
        load_target(spec, None)
    # the first failure is the one named (the parquet retry's error would only confuse)
    assert str(e.value).startswith("cannot load RobZamp/sick split test from the Hugging Face Hub "
                                   "(ConnectionError: no network).")
    assert "--target-file sick=PATH" in str(e.value)
