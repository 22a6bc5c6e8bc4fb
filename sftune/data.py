"""Training and evaluation data: three sources behind one interface, tokenised for the model.

* the Hugging Face Hub (`nyu-mll/glue`), what users with a network get by default;
* a GLUE-format directory (`--data-dir` or `SFTUNE_DATA_DIR`), laid out like the original GLUE download
  (SICK: the directory holding SICK.txt, one file whose `SemEval_set` column names the split);
* plain CSV/TSV/JSONL files (`--train-file`, `--validation-file`).

Every source becomes a `datasets.Dataset` with columns `idx`, `text_a`, `text_b` (pair tasks) and `label`
(class id, or float for regression). TSV files are read with quoting off, as GLUE requires.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sftune.config import DataConfig
from sftune.errors import UsageError
from sftune.hub import require_hub
from sftune.tasks import Task
from sftune.textfiles import check_utf8


@dataclass
class Splits:
    train: object | None  # datasets.Dataset
    evals: dict[str, object]  # split name -> datasets.Dataset
    source: str
    fingerprints: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ reading
def file_md5(path: Path) -> str:
    """The md5 of a data file, recorded with the rows read from it (the manifest's data fingerprint)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_table(path: Path, column_names: tuple[str, ...] | None = None, delimiter: str | None = None):
    """Read a CSV/TSV/JSONL file into a Dataset of strings, with quoting off for TSV (the suffix decides,
    unless `delimiter` is given: SICK.txt is tab-separated)."""
    import datasets

    if not path.is_file():
        raise UsageError(f"data file {path} does not exist. Check the path (or --data-dir).")
    if path.stat().st_size == 0:
        raise UsageError(f"data file {path} is empty. Give a file with a header and at least one row.")
    check_utf8(path)
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", errors="replace") as f:
        first_lines = [line for _, line in zip(range(2), (ln for ln in f if ln.strip()))]
    header_lines = 0 if (column_names or suffix in (".jsonl", ".json")) else 1
    if len(first_lines) <= header_lines:
        raise UsageError(f"data file {path} has no rows. Give a file with at least one example.")
    datasets.disable_progress_bars()
    try:
        if suffix in (".jsonl", ".json"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            sep = delimiter or ("\t" if suffix == ".tsv" else ",")
            kwargs = dict(delimiter=sep, keep_default_na=False, na_filter=False)
            if sep == "\t":
                kwargs["quoting"] = 3  # csv.QUOTE_NONE: GLUE text has unbalanced quotes (MRPC breaks otherwise)
            if column_names:
                kwargs["column_names"] = list(column_names)
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", **kwargs)
    except Exception as e:  # datasets wraps parser errors in several types
        raise UsageError(f"cannot parse data file {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if len(ds) == 0:
        raise UsageError(f"data file {path} has no rows. Give a file with at least one example.")
    return ds


def _label_to_value(raw, task: Task, where: str):
    if task.is_regression:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: label '{raw}' is not a number (task {task.name} is a regression).") from None
    names = task.label_names
    if isinstance(raw, str) and raw.strip().lower() in names:  # SICK writes ENTAILMENT
        return names.index(raw.strip().lower())
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = None
    if value is None or not 0 <= value < len(names):
        raise UsageError(f"{where}: label '{raw}' is not in task {task.name}'s label set "
                         f"({', '.join(names)} or 0..{len(names) - 1}). Fix the file or choose the right task.")
    return value


def _normalise(ds, task: Task, text_cols: tuple[str, ...], label_col: str | None, where: str):
    """Rename to text_a/text_b/label, convert labels, add idx; every problem names the file and column."""
    missing = [c for c in (*text_cols, *([label_col] if label_col else [])) if c not in ds.column_names]
    if missing:
        raise UsageError(f"{where}: missing column(s) {', '.join(missing)}; it has {', '.join(ds.column_names)}. "
                         "Set data.text_columns / data.label_column to the right names.")
    if len(text_cols) != (2 if task.is_pair else 1):
        raise UsageError(f"{where}: task {task.name} needs {2 if task.is_pair else 1} text column(s), "
                         f"got {len(text_cols)} ({', '.join(text_cols)}).")
    columns = {"idx": list(range(len(ds))), "text_a": [str(x) for x in ds[text_cols[0]]]}
    if task.is_pair:
        columns["text_b"] = [str(x) for x in ds[text_cols[1]]]
    if label_col:
        raw = ds[label_col]
        columns["label"] = [_label_to_value(v, task, f"{where} row {i + 1}") for i, v in enumerate(raw)]
    import datasets

    return datasets.Dataset.from_dict(columns)


def dir_split_table(task: Task, data_dir: Path, split: str, cache: dict | None = None):
    """One split of `task` from a local directory, as the raw table, and the file it came from.

    GLUE: one file per split (`TASK/dev.tsv`, or the file directly in `data_dir`). SICK: one file for all
    splits, filtered on `task.dir_split_column`. `cache` (path -> table) lets several splits read a file once."""
    root = data_dir / task.dir_name if (data_dir / task.dir_name).is_dir() else data_dir
    if not root.is_dir():
        raise UsageError(f"data directory {data_dir} does not exist. Point --data-dir at a GLUE-format directory"
                         + (" (for SICK: the directory holding SICK.txt)." if task.dir_split_column else "."))
    path = root / task.dir_files[split]
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist: --data-dir must hold {task.dir_name}/"
                         f"{task.dir_files[split]} or {task.dir_files[split]} for task {task.name}.")
    cache = {} if cache is None else cache
    if path not in cache:
        cache[path] = read_table(path, task.dir_columns, task.dir_delimiter)
    table = cache[path]
    if task.dir_split_column:
        column, value = task.dir_split_column, task.dir_split_values[split]
        if column not in table.column_names:
            raise UsageError(f"{path}: missing column {column} (the split of each row); it has "
                             f"{', '.join(table.column_names)}. Give the original SICK.txt.")
        table = table.select([i for i, v in enumerate(table[column]) if str(v).strip() == value])
        if len(table) == 0:
            raise UsageError(f"{path}: no row has {column} = {value} (split {split}). Give the original SICK.txt.")
    return table, path


def _from_dir(task: Task, data_dir: Path, need_train: bool) -> Splits:
    splits, prints, cache = {}, [], {}
    for split in task.dir_files:
        if split == "train" and not need_train:
            continue
        table, path = dir_split_table(task, data_dir, split, cache)
        where = str(path) + (f" ({task.dir_split_values[split]})" if task.dir_split_column else "")
        splits[split] = _normalise(table, task, task.dir_text, task.dir_label, where)
        prints.append({"split": split, "path": str(path.resolve()), "md5": file_md5(path), "rows": len(table)})
    root = path.parent
    return Splits(splits.pop("train", None), splits, f"glue-dir:{root}", prints)


def _from_files(task: Task, cfg: DataConfig, need_train: bool) -> Splits:
    files = {"train": cfg.train_file, "validation": cfg.validation_file}
    if need_train and not cfg.train_file:
        raise UsageError("--validation-file needs --train-file too for training (or use --data-dir).")
    if not cfg.validation_file:
        raise UsageError("--train-file needs --validation-file too: sftune evaluates on a held-out file.")
    splits, prints = {}, []
    for split, fname in files.items():
        if fname is None or (split == "train" and not need_train):
            continue
        path = Path(fname)
        table = read_table(path)
        text_cols = tuple(cfg.text_columns) if cfg.text_columns else _guess_text_columns(task, table.column_names)
        splits[split] = _normalise(table, task, text_cols, cfg.label_column, str(path))
        prints.append({"split": split, "path": str(path.resolve()), "md5": file_md5(path), "rows": len(table)})
    return Splits(splits.pop("train", None), splits, "files", prints)


def _guess_text_columns(task: Task, columns: list[str]) -> tuple[str, ...]:
    for candidate in (task.hub_text, task.dir_text, ("sentence1", "sentence2")[: len(task.hub_text)],
                      ("text_a", "text_b")[: len(task.hub_text)], ("sentence",), ("text",)):
        if candidate and all(c in columns for c in candidate) and len(candidate) == len(task.hub_text):
            return tuple(candidate)
    raise UsageError(f"cannot tell the text column(s) among {', '.join(columns)} for task {task.name}. "
                     f"Pass --set data.text_columns=COL{'1,COL2' if task.is_pair else ''}.")


def load_hub_dataset(name: str, config: str | None, split: str | None = None, parquet_fallback: bool = False):
    """A Hub dataset (one split, or all of them); raises the first error met, for the caller to word.

    A script dataset (SICK) is refused by recent `datasets`: with `parquet_fallback` the Hub's parquet
    conversion (revision refs/convert/parquet), which has the same rows, is tried next."""
    import datasets

    datasets.disable_progress_bars()
    attempts = [{}] + ([{"revision": "refs/convert/parquet"}] if parquet_fallback else [])
    error: Exception | None = None
    for extra in attempts:
        try:
            return datasets.load_dataset(name, config or None, split=split, **extra)
        except Exception as e:  # network, offline mode, script datasets, missing config or split
            error = error or e
    raise error


def _from_hub(task: Task, need_train: bool) -> Splits:
    name = task.hub_dataset + (f"/{task.hub_config}" if task.hub_config else "")
    require_hub(f"the data set {name}")
    try:
        ds = load_hub_dataset(task.hub_dataset, task.hub_config, parquet_fallback=task.hub_parquet_fallback)
    except Exception as e:  # network, offline mode or missing config: one clear sentence
        raise UsageError(f"cannot load {name} from the Hugging Face Hub ({type(e).__name__}). Without a "
                         "network use --data-dir DIR (GLUE layout; for SICK the directory holding SICK.txt) "
                         "or --train-file/--validation-file.") from None
    splits = {}
    for split in (("train",) if need_train else ()) + task.eval_splits:
        table = ds[split]
        splits[split] = _normalise(table, task, task.hub_text, task.hub_label, f"{name}:{split}")
    prints = [{"split": s, "dataset": task.hub_dataset, "config": task.hub_config, "fingerprint": ds[s]._fingerprint}
              for s in splits]
    return Splits(splits.pop("train", None), splits, f"hub:{task.hub_dataset}", prints)


def load_splits(task: Task, cfg: DataConfig, need_train: bool = True) -> Splits:
    """Load the task's data from files, a GLUE directory or the Hub, in that order of precedence."""
    if cfg.train_file or cfg.validation_file:
        return _from_files(task, cfg, need_train)
    data_dir = cfg.data_dir or os.environ.get("SFTUNE_DATA_DIR")
    if data_dir:
        return _from_dir(task, Path(data_dir).expanduser(), need_train)
    return _from_hub(task, need_train)


# ------------------------------------------------------------------------------------------- subsampling
HELDOUT = "heldout"  # the eval split carved from the training data (data.validation_from_train)


def _draw(labels: np.ndarray | None, n: int, size: int, seed: int) -> list[int]:
    """Sorted indices of `size` of `n` rows drawn from `seed`; with labels, each label keeps its share
    (largest remainder)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(rng.choice(n, size=size, replace=False).tolist())
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / n * size
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: size - take.sum()]:
        take[i] += 1
    chosen = []
    for cls, k in zip(classes, take):
        pool = np.flatnonzero(labels == cls)
        chosen.extend(rng.choice(pool, size=int(k), replace=False).tolist())
    return sorted(chosen)


def subsample(ds, size: int, seed: int, stratified: bool, task: Task):
    """`size` training examples drawn from `seed`; stratified keeps each label's share (largest remainder)."""
    n = len(ds)
    if size >= n:
        return ds
    labeled = stratified and not task.is_regression and "label" in ds.column_names  # causal-LM rows have none
    labels = np.asarray(ds["label"]) if labeled else None
    return ds.select(_draw(labels, n, size, seed))


def carve_validation(ds, size: int, seed: int, task: Task):
    """(rest, heldout): `size` training examples set aside for model selection, stratified by label for
    classification, drawn from `seed` (not the run's seed, so every run of a sweep is scored on the same
    held-out rows and trains from the same remaining pool). The two parts are disjoint."""
    n = len(ds)
    if not 0 < size < n:
        raise UsageError(f"data.validation_from_train={size}: the training set has {n} examples; give a count "
                         f"from 1 to {n - 1} (and leave enough for training).")
    labels = None if task.is_regression or "label" not in ds.column_names else np.asarray(ds["label"])
    held = _draw(labels, n, size, seed)
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return ds.select(np.flatnonzero(keep).tolist()), ds.select(held)


# ---------------------------------------------------------------------------------------------- tokenise
def tokenize(ds, tokenizer, task: Task, max_length: int):
    """Tokenise with longest-first truncation; padding happens per batch in the collator."""

    def encode(batch):
        args = (batch["text_a"], batch["text_b"]) if task.is_pair else (batch["text_a"],)
        return tokenizer(*args, truncation="longest_first", max_length=max_length)

    drop = [c for c in ("text_a", "text_b") if c in ds.column_names]
    out = ds.map(encode, batched=True, remove_columns=drop, desc=None)
    if "label" in out.column_names:
        out = out.rename_column("label", "labels")
    return out


class EpochSampler(torch.utils.data.Sampler):
    """A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(ds, tokenizer, batch_size: int, shuffle_seed: int | None = None):
    """Batches padded to their longest example (dynamic padding); shuffled by (seed, epoch) when a seed is given."""
    from transformers import DataCollatorWithPadding

    sampler = EpochSampler(len(ds), shuffle_seed) if shuffle_seed is not None else None
    # A private generator: building a DataLoader iterator draws a base seed, and drawing it from the global
    # RNG would make a resumed run's dropout masks differ from an uninterrupted run's.
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler,
                                       collate_fn=DataCollatorWithPadding(tokenizer),
                                       generator=torch.Generator().manual_seed(0))
