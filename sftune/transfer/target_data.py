"""The rows of each target: read from a file, a GLUE directory or the Hub (through sftune.data), with their gold
labels as class ids of the target's own label set; and SNLI's training data written as files the trainer reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftune.artifacts import atomic_write_text
from sftune.data import dir_split_table, file_md5, load_hub_dataset, read_table
from sftune.errors import UsageError
from sftune.tasks import get_task
from sftune.transfer.labels import gold_label_ids
from sftune.transfer.targets import SNLI_HUB, TargetSpec

PAIR_GUESSES = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question", "sentence"),
                ("sentence_A", "sentence_B"), ("text_a", "text_b"))


@dataclass
class TargetData:
    name: str
    labels: tuple[str, ...]
    dataset: Any  # datasets.Dataset with idx, text_a, text_b, label (class id into `labels`)
    split: str
    origin: dict[str, Any]  # where the rows came from (path and md5, or Hub id/config/split/fingerprint)
    dropped: int = 0  # rows without a gold label


def _build(table, text_cols: tuple[str, str], ids: list[int | None]):
    import datasets

    keep = [i for i, v in enumerate(ids) if v is not None]
    a, b = table[text_cols[0]], table[text_cols[1]]
    return datasets.Dataset.from_dict({"idx": keep, "text_a": [str(a[i]) for i in keep],
                                       "text_b": [str(b[i]) for i in keep], "label": [ids[i] for i in keep]})


def _guess_pair(columns: list[str], preferred: list[tuple[str, ...]], where: str, name: str) -> tuple[str, str]:
    for cand in [*preferred, *PAIR_GUESSES]:
        if len(cand) == 2 and all(c in columns for c in cand):
            return tuple(cand)  # type: ignore[return-value]
    raise UsageError(f"{where}: cannot tell the premise/hypothesis columns among {', '.join(columns)}. "
                     f"Pass --target-set {name}.text_columns=COL1,COL2.")


def _load_file(spec: TargetSpec) -> TargetData:
    path, opts, defn = spec.file, spec.options, spec.definition
    columns = tuple(opts["columns"]) if opts.get("columns") else None
    task = get_task(defn.glue_task) if defn and defn.glue_task else None
    table = read_table(path, columns, "\t" if task and task.dir_split_column and path.suffix == ".txt" else None)
    rows = len(table)
    where = str(path)
    if task and task.dir_split_column in table.column_names:  # the whole SICK.txt: keep the split asked for
        split = opts.get("split") or defn.glue_split
        if split not in task.dir_split_values:
            raise UsageError(f"target {spec.name}: split '{split}' is not one of {', '.join(task.dir_split_values)}.")
        value = task.dir_split_values[split]
        table = table.select([i for i, v in enumerate(table[task.dir_split_column]) if str(v).strip() == value])
        where += f" ({value})"
    preferred: list[tuple[str, ...]] = []
    if defn:
        preferred.append(defn.hub_text)
        if defn.glue_task:
            preferred.append(get_task(defn.glue_task).dir_text)
    text_cols = tuple(opts["text_columns"]) if opts.get("text_columns") else \
        _guess_pair(table.column_names, preferred, where, spec.name)
    label_col = opts.get("label_column")
    if not label_col:
        candidates = ["label", "gold_label"]
        if defn:
            candidates.insert(0, defn.hub_label)
            if defn.glue_task:
                candidates.insert(1, get_task(defn.glue_task).dir_label)
        label_col = next((c for c in candidates if c in table.column_names), "label")
    missing = [c for c in (*text_cols, label_col) if c not in table.column_names]
    if missing:
        raise UsageError(f"{where}: missing column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}. "
                         f"Set --target-set {spec.name}.text_columns=A,B / {spec.name}.label_column=COL.")
    labels = spec.static_labels
    ids, labels = gold_label_ids(table[label_col], labels, labels, where)
    ds = _build(table, text_cols, ids)
    origin = {"kind": "file", "path": str(path.resolve()), "md5": file_md5(path), "rows": len(table),
              "text_columns": list(text_cols), "label_column": label_col}
    if len(table) != rows:
        origin["file_rows"] = rows
    return TargetData(spec.name, labels, ds, spec.options.get("split") or "file", origin, len(table) - len(ds))


def _load_glue_dir(spec: TargetSpec, data_dir: Path) -> TargetData:
    defn = spec.definition
    task = get_task(defn.glue_task)
    split = spec.options.get("split") or defn.glue_split
    if split not in task.dir_files:
        raise UsageError(f"target {spec.name}: split '{split}' is not in a --data-dir "
                         f"(it has {', '.join(task.dir_files)}).")
    if not (data_dir / task.dir_name).is_dir() and not (data_dir / task.dir_files[split]).is_file():
        raise UsageError(f"--data-dir {data_dir} has neither {task.dir_name}/{task.dir_files[split]} nor "
                         f"{task.dir_files[split]} for target {spec.name}: give --target-file {spec.name}=PATH "
                         "(--data-dir is one directory, shared by the source and every target).")
    table, path = dir_split_table(task, data_dir, split)
    for col in (*task.dir_text, task.dir_label):
        if col not in table.column_names:
            raise UsageError(f"{path}: missing column {col}; it has {', '.join(table.column_names)}.")
    labels = spec.static_labels
    ids, labels = gold_label_ids(table[task.dir_label], labels, labels, str(path))
    origin = {"kind": "glue-dir", "path": str(path.resolve()), "md5": file_md5(path), "rows": len(table)}
    if task.dir_split_column:
        origin["split_column"] = {task.dir_split_column: task.dir_split_values[split]}
    ds = _build(table, task.dir_text, ids)
    return TargetData(spec.name, labels, ds, split, origin, len(table) - len(ds))


def load_hub(dataset: str, config: str | None, split: str, parquet_fallback: bool, hint: str):
    """One split of a Hub dataset; network and offline failures become one UsageError."""
    try:
        return load_hub_dataset(dataset, config, split, parquet_fallback)
    except Exception as error:  # network, offline mode, script datasets, missing split
        name = dataset + (f"/{config}" if config else "")
        raise UsageError(f"cannot load {name} split {split} from the Hugging Face Hub ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:160] if str(error) else ''}). {hint}") from None


def _load_hub_target(spec: TargetSpec) -> TargetData:
    defn = spec.definition
    split = spec.split
    table = load_hub(defn.hub, defn.hub_config, split, defn.parquet_fallback,
                     f"Without a network give the file: --target-file {spec.name}=PATH"
                     + (" or --data-dir DIR (GLUE layout)." if defn.glue_task else "."))
    where = f"{defn.hub}:{split}"
    feature = table.features.get(defn.hub_label)
    id_names = tuple(getattr(feature, "names", None) or ()) or None
    labels = spec.static_labels
    ids, labels = gold_label_ids(table[defn.hub_label], labels, id_names or labels, where)
    ds = _build(table, defn.hub_text, ids)
    origin = {"kind": "hub", "dataset": defn.hub, "config": defn.hub_config, "split": split,
              "fingerprint": getattr(table, "_fingerprint", None), "rows": len(table)}
    return TargetData(spec.name, labels, ds, split, origin, len(table) - len(ds))


def load_target(spec: TargetSpec, data_dir: str | None) -> TargetData:
    """A file if one was given; GLUE targets from `data_dir` when set; otherwise the Hub."""
    if spec.file is not None:
        data = _load_file(spec)
    elif spec.definition.glue_task and data_dir:
        data = _load_glue_dir(spec, Path(data_dir).expanduser())
    else:
        data = _load_hub_target(spec)
    if len(data.dataset) == 0:
        raise UsageError(f"target {spec.name} ({data.split}) has no example with a gold label. Choose a "
                         f"labelled split: --target-set {spec.name}.split=SPLIT.")
    return data


def snli_source_files(cache: Path | None = None) -> tuple[Path, Path]:
    """SNLI train and validation from the Hub, without unlabelled rows, as JSONL files the trainer can read
    (columns premise, hypothesis, label with label names). Written once into the cache."""
    root = (cache or Path(os.environ.get("SFTUNE_CACHE", "~/.cache/sftune")).expanduser()) / "snli"
    paths = (root / "train.jsonl", root / "validation.jsonl")
    if all(p.is_file() for p in paths):
        return paths
    for split, path in zip(("train", "validation"), paths):
        table = load_hub(SNLI_HUB, None, split, False, "Without a network give SNLI as --train-file/"
                         "--validation-file (columns premise, hypothesis, label).")
        names = table.features["label"].names
        lines = [json.dumps({"premise": p, "hypothesis": h, "label": names[y]})
                 for p, h, y in zip(table["premise"], table["hypothesis"], table["label"]) if y >= 0]
        atomic_write_text(path, "\n".join(lines) + "\n")
    return paths
