"""SICK (../shared/data/sick/SICK.txt) as a task and as a transfer source/target, on the real file.

Expected values come from the file itself, read here with the csv module (not sftune's reader), and from the
official SemEval-2014 split sizes and label counts quoted in the data README."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from sftune.config import DataConfig
from sftune.errors import UsageError
from sftune.tasks import get_task

SICK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sick"
OFFICIAL = {"TRAIN": (4439, {"entailment": 1274, "neutral": 2524, "contradiction": 641}),
            "TRIAL": (495, {"entailment": 143, "neutral": 281, "contradiction": 71}),
            "TEST": (4906, {"entailment": 1404, "neutral": 2790, "contradiction": 712})}
SPLITS = {"train": "TRAIN", "validation": "TRIAL", "test": "TEST"}


@pytest.fixture(scope="module")
def sick_dir() -> Path:
    if not (SICK / "SICK.txt").is_file():
        pytest.skip(f"SICK not found at {SICK}")
    return SICK


@pytest.fixture(scope="module")
def sick_rows(sick_dir) -> dict[str, list[dict]]:
    """SemEval_set -> rows, read with the csv module (CRLF line endings, tabs, no quoting)."""
    with open(sick_dir / "SICK.txt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["SemEval_set"], []).append(row)
    return out


def test_sick_splits_from_the_data_dir(sick_dir, sick_rows):
    from sftune.data import load_splits

    task = get_task("sick")
    splits = load_splits(task, DataConfig(data_dir=str(sick_dir)))
    assert list(splits.evals) == ["validation", "test"]
    for split, ds in {"train": splits.train, **splits.evals}.items():
        official = SPLITS[split]
        size, counts = OFFICIAL[official]
        assert len(ds) == size == len(sick_rows[official])
        assert Counter(task.label_names[y] for y in ds["label"]) == counts
        # row by row: same sentences, same label as the csv module reads them
        for i in (0, 1, size // 2, size - 1):
            row = sick_rows[official][i]
            assert (ds[i]["text_a"], ds[i]["text_b"]) == (row["sentence_A"], row["sentence_B"])
            assert task.label_names[ds[i]["label"]] == row["entailment_label"].lower()
            assert not ds[i]["text_b"].endswith("\r")
    assert {p["split"]: p["rows"] for p in splits.fingerprints} == {"train": 4439, "validation": 495, "test": 4906}


def test_sick_relatedness_is_a_regression(sick_dir, sick_rows):
    from sftune.data import load_splits

    task = get_task("sick-r")
    assert task.is_regression and task.main_metric == "pearson" and get_task("SICK_R") is task
    splits = load_splits(task, DataConfig(data_dir=str(sick_dir)), need_train=False)
    assert splits.train is None
    test = splits.evals["test"]
    assert test["label"][:5] == [float(r["relatedness_score"]) for r in sick_rows["TEST"][:5]]
    assert 1.0 <= min(test["label"]) and max(test["label"]) <= 5.0


def test_sick_data_dir_errors_name_the_file(tmp_path):
    from sftune.data import load_splits

    with pytest.raises(UsageError, match="SICK.txt"):
        load_splits(get_task("sick"), DataConfig(data_dir=str(tmp_path)))
    (tmp_path / "SICK.txt").write_text("pair_ID\tsentence_A\tsentence_B\tentailment_label\r\n1\ta\tb\tNEUTRAL\r\n")
    with pytest.raises(UsageError, match="missing column SemEval_set"):
        load_splits(get_task("sick"), DataConfig(data_dir=str(tmp_path)))


def test_sick_targets_from_the_data_dir_and_from_the_file(sick_dir):
    from sftune.transfer import load_target, parse_targets

    (spec,) = parse_targets(["sick"], None, None)
    target = load_target(spec, str(sick_dir))
    assert (target.split, len(target.dataset)) == ("test", 4906)
    assert target.labels == ("entailment", "neutral", "contradiction")
    assert target.origin["split_column"] == {"SemEval_set": "TEST"}
    # SICK.txt given as a file under the built-in name: only the asked split is kept (TEST by default)
    (spec,) = parse_targets(None, [f"sick={sick_dir / 'SICK.txt'}"], ["sick.split=validation"])
    trial = load_target(spec, None)
    assert len(trial.dataset) == 495 and trial.origin["file_rows"] == 9840
    assert Counter(trial.labels[y] for y in trial.dataset["label"]) == OFFICIAL["TRIAL"][1]
    # one --data-dir for the source and every target: a GLUE target there is a clear error
    (spec,) = parse_targets(["rte"], None, None)
    with pytest.raises(UsageError, match="--target-file rte=PATH"):
        load_target(spec, str(sick_dir))


def test_sick_source_transfers_to_rte_and_sick(cli, tiny_bert, glue_dir, sick_dir, tmp_path):
    """A tiny BERT trained 3 steps on 64 SICK TRAIN rows; evaluated on RTE dev (2-way, mapped by name) and on
    SICK TEST as a target, which must agree with the run's own in-domain TEST evaluation."""
    out = tmp_path / "run"
    code, stdout, stderr = cli("transfer", tiny_bert, "--source", "sick", "--targets", "rte,sick",
                                  "--data-dir", sick_dir, "--target-file", f"rte={glue_dir / 'RTE' / 'dev.tsv'}",
                                  "--train-size", "64", "--max-steps", "3", "--batch-size", "16",
                                  "--set", "data.eval_batch_size=256", "-o", out, "--format", "json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["source"] == "sick" and doc["task"] == "sick" and doc["training"]["n_train"] == 64
    assert doc["source_labels"] == ["entailment", "neutral", "contradiction"]
    rte, sick = doc["targets"]["rte"], doc["targets"]["sick"]
    assert rte["label_map"] == {"entailment": "entailment", "neutral": "not_entailment",
                                "contradiction": "not_entailment"}
    assert sick["label_map"] == {n: n for n in doc["source_labels"]}
    assert rte["counts"]["gold"] == {"entailment": 146, "not_entailment": 131}
    assert sick["counts"]["gold"] == OFFICIAL["TEST"][1]
    assert sick["accuracy"] == pytest.approx(doc["in_domain"]["test"]["accuracy"])
    rows = [json.loads(x) for x in (out / "transfer" / "rte.jsonl").read_text().splitlines()]
    labels = doc["source_labels"]
    for r in rows:
        three_way = labels[max(range(3), key=lambda k: r["probabilities"][k])]
        assert r["source_prediction"] == three_way
        assert r["prediction"] == ("entailment" if three_way == "entailment" else "not_entailment")
    assert rte["accuracy"] == pytest.approx(sum(r["prediction"] == r["label"] for r in rows) / 277)

    # the terminal output reports the mapping
    code, stdout, stderr = cli("transfer", out, "--targets", "rte", "--target-file",
                                  f"rte={glue_dir / 'RTE' / 'dev.tsv'}", "-o", tmp_path / "again")
    assert code == 0, stderr
    assert "labels mapped entailment->entailment, neutral->not_entailment, contradiction->not_entailment" in stdout


def test_sick_hub_path_retries_the_parquet_conversion(monkeypatch):
    """Offline stand-in for the Hub: the script dataset is refused, its refs/convert/parquet branch answers."""
    import datasets

    from sftune.data import load_splits

    calls = []
    rows = {"sentence_A": ["a man plays", "a dog runs"], "sentence_B": ["a person plays", "a cat sleeps"],
            "label": [0, 2], "relatedness_score": [4.5, 1.5]}

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config, kwargs.get("revision")))
        if kwargs.get("revision") != "refs/convert/parquet":
            raise RuntimeError("Dataset scripts are no longer supported")
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    splits = load_splits(get_task("sick"), DataConfig())
    assert calls == [("RobZamp/sick", None, None), ("RobZamp/sick", None, "refs/convert/parquet")]
    assert splits.train["label"] == [0, 2] and list(splits.evals) == ["validation", "test"]
    assert splits.evals["test"]["text_b"] == ["a person plays", "a cat sleeps"]
    regression = load_splits(get_task("sick-r"), DataConfig(), need_train=False)
    assert regression.evals["test"]["label"] == [4.5, 1.5]


@pytest.mark.hub
def test_sick_from_the_hub():
    """RobZamp/sick (script dataset; the parquet conversion as fallback): the official split sizes."""
    from sftune.data import load_splits

    splits = load_splits(get_task("sick"), DataConfig())
    assert (len(splits.train), len(splits.evals["validation"]), len(splits.evals["test"])) == (4439, 495, 4906)
    assert Counter(splits.evals["test"]["label"]) == {1: 2790, 0: 1404, 2: 712}
