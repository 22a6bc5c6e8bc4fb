import pytest

from sftune.config import DataConfig
from sftune.data import carve_validation, load_splits, subsample
from sftune.errors import UsageError
from sftune.tasks import get_task


@pytest.mark.parametrize("task,n_train,n_dev,first_label", [
    ("rte", 2490, 277, 1), ("mrpc", 3668, 408, 1), ("stsb", 5749, 1500, 5.0), ("cola", 8551, 1043, 1)])
def test_glue_directory_rows_and_labels(glue_dir, task, n_train, n_dev, first_label):
    s = load_splits(get_task(task), DataConfig(data_dir=str(glue_dir)))
    assert len(s.train) == n_train and len(s.evals["validation"]) == n_dev
    assert s.train[0]["label"] == first_label
    assert all(fp["md5"] for fp in s.fingerprints)


def test_rte_string_labels_map_to_glue_ids(glue_dir):
    s = load_splits(get_task("rte"), DataConfig(data_dir=str(glue_dir)), need_train=False)
    labels = s.evals["validation"]["label"]
    assert labels.count(0) == 146 and labels.count(1) == 131  # entailment / not_entailment


def test_data_dir_from_environment(glue_dir, monkeypatch):
    monkeypatch.setenv("SFTUNE_DATA_DIR", str(glue_dir))
    s = load_splits(get_task("rte"), DataConfig(), need_train=False)
    assert s.source.startswith("glue-dir")


def test_plain_files_csv_and_jsonl(tmp_path):
    (tmp_path / "train.csv").write_text('premise,hypothesis,gold\n"a, b",c,entailment\nd,e,not_entailment\n')
    (tmp_path / "dev.jsonl").write_text('{"premise": "x", "hypothesis": "y", "gold": 0}\n')
    cfg = DataConfig(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "dev.jsonl"),
                     text_columns=["premise", "hypothesis"], label_column="gold")
    s = load_splits(get_task("rte"), cfg)
    assert s.train["text_a"] == ["a, b", "d"] and s.train["label"] == [0, 1]
    assert s.evals["validation"]["label"] == [0]


@pytest.mark.parametrize("content,match", [
    ("", "is empty"),
    ("sentence1\tlabel\nx\tentailment\n", "missing column"),
    ("sentence1\tsentence2\tlabel\nx\ty\tmaybe\n", "label 'maybe' is not in task rte's label set"),
    ("sentence1\tsentence2\tlabel\n", "has no rows"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, match):
    (tmp_path / "t.tsv").write_text(content)
    cfg = DataConfig(train_file=str(tmp_path / "t.tsv"), validation_file=str(tmp_path / "t.tsv"),
                     text_columns=["sentence1", "sentence2"])
    with pytest.raises(UsageError, match=match) as e:
        load_splits(get_task("rte"), cfg)
    assert "\n" not in str(e.value)


def test_missing_file_and_missing_task_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_splits(get_task("rte"), DataConfig(train_file="nope.tsv", validation_file="nope.tsv"))
    with pytest.raises(UsageError, match="must hold RTE/train.tsv"):
        load_splits(get_task("rte"), DataConfig(data_dir=str(tmp_path)))


def test_stratified_subsample_keeps_label_shares(glue_dir):
    s = load_splits(get_task("sst2"), DataConfig(data_dir=str(glue_dir)))
    sub = subsample(s.train, 500, seed=3, stratified=True, task=get_task("sst2"))
    labels = sub["label"]
    assert len(labels) == 500
    share = sum(s.train["label"]) / len(s.train)
    assert abs(sum(labels) / 500 - share) <= 1 / 500 + 1e-9
    again = subsample(s.train, 500, seed=3, stratified=True, task=get_task("sst2"))
    assert again["idx"] == sub["idx"]
    assert subsample(s.train, 500, seed=4, stratified=True, task=get_task("sst2"))["idx"] != sub["idx"]


def test_validation_from_train_is_stratified_seeded_and_disjoint(glue_dir):
    task = get_task("mrpc")
    train = load_splits(task, DataConfig(data_dir=str(glue_dir))).train
    rest, held = carve_validation(train, 400, seed=0, task=task)
    assert len(held) == 400 and len(rest) == len(train) - 400
    assert not set(held["idx"]) & set(rest["idx"])
    share = sum(train["label"]) / len(train)  # MRPC: 68% paraphrases
    assert abs(sum(held["label"]) / 400 - share) <= 1 / 400 + 1e-9
    assert carve_validation(train, 400, seed=0, task=task)[1]["idx"] == held["idx"]
    assert carve_validation(train, 400, seed=1, task=task)[1]["idx"] != held["idx"]
    # the training subset is drawn from the rest: never a held-out row, whatever the run's seed
    for seed in (1, 2, 3):
        sub = subsample(rest, 1000, seed=seed, stratified=True, task=task)
        assert len(sub) == 1000 and not set(sub["idx"]) & set(held["idx"])
    stsb = get_task("stsb")  # regression: a plain seeded draw
    _, held_r = carve_validation(load_splits(stsb, DataConfig(data_dir=str(glue_dir))).train, 300, 0, stsb)
    assert len(held_r) == 300
    with pytest.raises(UsageError, match="validation_from_train=3668"):
        carve_validation(train, len(train), seed=0, task=task)
