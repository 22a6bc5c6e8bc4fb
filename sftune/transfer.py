"""Out-of-domain NLI transfer (appendix E): a model trained on a 3-way NLI task (MNLI or SNLI), evaluated on
other NLI sets with its predicted labels mapped onto each target's label set.

    targets     what can be evaluated: GLUE rte/qnli/mnli (Hub or a GLUE directory), SICK (Hub or the
                directory holding SICK.txt), SNLI, SciTail (Hub), or any CSV/TSV/JSONL file with a column
                and label mapping
    mapping     source label -> target label, by name: a 3-way source on a 2-way target sends every
                non-entailment label to the target's non-entailment class; equal names map to each other;
                explicit `--label-map` entries win; a label left without a rule is a UsageError
    evaluation  argmax over the source labels, then the mapping (the protocol maps predicted labels, it does
                not sum probabilities); accuracy, per-class counts and the confusion after mapping
    artifacts   RUN_DIR/transfer.json (flat `metrics`: {"rte/accuracy": ...}) and
                RUN_DIR/transfer/<target>.jsonl (gold, 3-way prediction, mapped prediction, probabilities)

The command lives in `sftune/cli/transfer.py`; this module does no printing.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sftune.artifacts import RunDir, atomic_write_json, atomic_write_text
from sftune.errors import UsageError, did_you_mean, unknown
from sftune.tasks import get_task

ENTAILMENT = "entailment"
NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")

# Label spellings found in NLI files, folded (after lower-casing) onto the canonical names.
SYNONYMS = {"entails": "entailment", "entailed": "entailment", "entail": "entailment",
            "contradicts": "contradiction", "contradictory": "contradiction",
            "non_entailment": "not_entailment", "non-entailment": "not_entailment",
            "not-entailment": "not_entailment", "not_entailed": "not_entailment"}
UNLABELED = {"", "-", "-1", "none", "null", "nan"}  # SNLI marks examples without a gold label with '-' / -1
LABEL_ORDER = ("entailment", "neutral", "contradiction", "not_entailment")

# Sources: the training task in the task table (SNLI has MNLI's labels and pair layout, so it trains that head).
SOURCES = {"mnli": "mnli", "snli": "mnli", "sick": "sick"}
SNLI_HUB = "stanfordnlp/snli"


# ------------------------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class TargetDef:
    """A built-in evaluation set: where it lives on the Hub and (GLUE tasks) in a GLUE directory."""

    name: str
    labels: tuple[str, ...]  # gold label names in class-id order (the Hub's ClassLabel order)
    hub: str
    hub_config: str | None
    split: str  # default split: GLUE dev (its test has no labels), otherwise the labelled test split
    hub_text: tuple[str, str]
    hub_label: str
    glue_task: str | None = None  # tasks.py entry whose dir_* fields describe the --data-dir file(s)
    glue_split: str | None = None  # key of that task's dir_files
    parquet_fallback: bool = False  # script-based Hub dataset: also try its refs/convert/parquet branch
    description: str = ""


TARGETS: dict[str, TargetDef] = {
    t.name: t for t in [
        TargetDef("rte", NLI2, "nyu-mll/glue", "rte", "validation", ("sentence1", "sentence2"), "label",
                  glue_task="rte", glue_split="validation", description="GLUE RTE dev (277)"),
        TargetDef("qnli", NLI2, "nyu-mll/glue", "qnli", "validation", ("question", "sentence"), "label",
                  glue_task="qnli", glue_split="validation", description="GLUE QNLI dev (5,463)"),
        TargetDef("mnli", NLI3, "nyu-mll/glue", "mnli", "validation_matched", ("premise", "hypothesis"), "label",
                  glue_task="mnli", glue_split="validation_matched", description="MNLI dev matched (9,815)"),
        TargetDef("mnli-mm", NLI3, "nyu-mll/glue", "mnli", "validation_mismatched", ("premise", "hypothesis"),
                  "label", glue_task="mnli", glue_split="validation_mismatched",
                  description="MNLI dev mismatched (9,832)"),
        TargetDef("snli", NLI3, SNLI_HUB, None, "test", ("premise", "hypothesis"), "label",
                  description="SNLI test (10,000 minus unlabelled)"),
        TargetDef("scitail", ("entailment", "neutral"), "allenai/scitail", "snli_format", "test",
                  ("sentence1", "sentence2"), "gold_label", description="SciTail test (2,126)"),
        TargetDef("sick", NLI3, "RobZamp/sick", None, "test", ("sentence_A", "sentence_B"), "label",
                  glue_task="sick", glue_split="test", parquet_fallback=True, description="SICK test (4,906)"),
    ]
}
TARGET_ALIASES = {"mnli-m": "mnli", "mnli_m": "mnli", "mnli_mm": "mnli-mm", "mnli-mismatched": "mnli-mm",
                  "sick-e": "sick", "sci-tail": "scitail"}
TARGET_KEYS = ("split", "text_columns", "label_column", "labels", "columns")
PAIR_GUESSES = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question", "sentence"),
                ("sentence_A", "sentence_B"), ("text_a", "text_b"))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TargetSpec:
    """A target as the user asked for it: a built-in definition, a file, or both (a file for a built-in name)."""

    name: str
    definition: TargetDef | None = None
    file: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def static_labels(self) -> tuple[str, ...] | None:
        """Labels known without reading data (built-ins, or a file whose labels are declared)."""
        if self.options.get("labels"):
            return tuple(self.options["labels"])
        return self.definition.labels if self.definition else None

    @property
    def split(self) -> str:
        return self.options.get("split") or (self.definition.split if self.definition else "file")


@dataclass
class TargetData:
    name: str
    labels: tuple[str, ...]
    dataset: Any  # datasets.Dataset with idx, text_a, text_b, label (class id into `labels`)
    split: str
    origin: dict[str, Any]  # where the rows came from (path and md5, or Hub id/config/split/fingerprint)
    dropped: int = 0  # rows without a gold label


def target_name(raw: str) -> str:
    key = raw.strip().lower()
    return TARGET_ALIASES.get(key, key)


def _split_list(items: list[str] | None) -> list[str]:
    return [x.strip() for item in items or [] for x in item.split(",") if x.strip()]


def parse_targets(targets: list[str] | None, files: list[str] | None, sets: list[str] | None) -> list[TargetSpec]:
    """`--targets a,b`, `--target-file NAME=PATH` and `--target-set NAME.KEY=VALUE` -> one spec per target."""
    specs: dict[str, TargetSpec] = {}
    for raw in _split_list(targets):
        name = target_name(raw)
        if name not in TARGETS:
            raise unknown("target", raw, TARGETS, "Or evaluate a file: --target-file NAME=PATH.")
        specs.setdefault(name, TargetSpec(name, TARGETS[name]))
    for item in files or []:
        raw, sep, path = item.partition("=")
        if not sep or not raw.strip() or not path.strip():
            raise UsageError(f"--target-file '{item}': expected NAME=PATH, e.g. --target-file scitail=test.tsv.")
        name = target_name(raw)
        if not NAME_RE.match(name):
            raise UsageError(f"--target-file '{item}': the name '{raw}' may use letters, digits, '.', '_' and '-'.")
        spec = specs.setdefault(name, TargetSpec(name, TARGETS.get(name)))
        spec.file = Path(path.strip()).expanduser()
    if not specs:
        raise UsageError("no targets: give --targets (" + ", ".join(TARGETS) + ") and/or --target-file NAME=PATH.")
    for item in sets or []:
        key, sep, value = item.partition("=")
        name, dot, option = key.strip().rpartition(".")
        if not sep or not dot:
            raise UsageError(f"--target-set '{item}': expected NAME.KEY=VALUE, e.g. --target-set "
                             "scitail.split=validation (keys: " + ", ".join(TARGET_KEYS) + ").")
        name = target_name(name)
        if name not in specs:
            raise UsageError(f"--target-set '{item}': '{name}' is not one of the targets "
                             f"({', '.join(specs)}).{did_you_mean(name, specs)}")
        if option not in TARGET_KEYS:
            raise UsageError(f"--target-set '{item}': unknown key '{option}'.{did_you_mean(option, TARGET_KEYS)} "
                             f"Keys: {', '.join(TARGET_KEYS)}.")
        value = value.strip()
        if option in ("text_columns", "labels", "columns"):
            parsed = [v.strip() for v in value.split(",") if v.strip()]
            if option == "labels":
                parsed = [canonical_label(v) for v in parsed]
                if len(set(parsed)) != len(parsed) or len(parsed) < 2:
                    raise UsageError(f"--target-set '{item}': labels must name two or more different classes.")
            specs[name].options[option] = parsed
        else:
            specs[name].options[option] = value
    for spec in specs.values():
        cols = spec.options.get("text_columns")
        if cols is not None and len(cols) != 2:
            raise UsageError(f"--target-set {spec.name}.text_columns: NLI targets need two text columns "
                             f"(premise,hypothesis), got {len(cols)}.")
        if spec.file is None and any(k in spec.options for k in ("text_columns", "label_column", "columns")):
            raise UsageError(f"--target-set {spec.name}: text_columns, label_column and columns apply to a "
                             f"--target-file; give --target-file {spec.name}=PATH.")
    return list(specs.values())


# ------------------------------------------------------------------------------------------------ mapping
def canonical_label(raw: Any) -> str:
    low = str(raw).strip().lower()
    return SYNONYMS.get(low, low)


def parse_label_maps(items: list[str] | None) -> dict[str | None, dict[str, str]]:
    """`--label-map [TARGET:]src=dst,src=dst` (repeatable) -> {target or None (all targets): {src: dst}}."""
    out: dict[str | None, dict[str, str]] = {}
    for item in items or []:
        head, colon, rest = item.partition(":")
        scope = None
        if colon and "=" not in head:
            scope, body = target_name(head), rest
        else:
            body = item
        pairs = [p.strip() for p in body.split(",") if p.strip()]
        if not pairs:
            raise UsageError(f"--label-map '{item}': expected [TARGET:]SOURCE=TARGET_LABEL,..., "
                             "e.g. --label-map scitail:contradiction=neutral.")
        for pair in pairs:
            src, sep, dst = pair.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise UsageError(f"--label-map '{item}': '{pair}' is not SOURCE=TARGET_LABEL, "
                                 "e.g. --label-map neutral=not_entailment.")
            out.setdefault(scope, {})[canonical_label(src)] = canonical_label(dst)
    return out


def explicit_map(maps: dict[str | None, dict[str, str]], target: str) -> dict[str, str]:
    return {**maps.get(None, {}), **maps.get(target, {})}


def check_map_scopes(maps: dict[str | None, dict[str, str]], names: list[str]) -> None:
    for scope in maps:
        if scope is not None and scope not in names:
            raise UsageError(f"--label-map {scope}:...: '{scope}' is not one of the targets "
                             f"({', '.join(names)}).{did_you_mean(scope, names)}")


def resolve_mapping(source_labels: tuple[str, ...] | None, target_labels: tuple[str, ...], target: str,
                    explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Source label -> target label for every source label, or a UsageError that says what to pass.

    Rules, in order: an explicit `--label-map` entry; the same name in the target; on a 2-way target with
    `entailment` and one other class, every other source label (neutral, contradiction, not_entailment) goes
    to that other class (not_entailment for RTE/QNLI, neutral for SciTail). Nothing else is guessed."""
    if not source_labels:
        raise UsageError("the source task is a regression: transfer needs a classifier (train on mnli or snli).")
    explicit = dict(explicit or {})
    tgt = tuple(target_labels)
    for src, dst in explicit.items():
        if src not in source_labels:
            raise UsageError(f"--label-map: '{src}' is not a label of the source model "
                             f"({', '.join(source_labels)}).{did_you_mean(src, source_labels)}")
        if dst not in tgt:
            raise UsageError(f"--label-map: '{dst}' is not a label of target {target} ({', '.join(tgt)}). "
                             f"Scope the entry with '{target}:' only for targets that have it.")
    others = [t for t in tgt if t != ENTAILMENT]
    two_way = len(tgt) == 2 and ENTAILMENT in tgt and ENTAILMENT in source_labels
    mapping: dict[str, str] = {}
    for src in source_labels:
        if src in explicit:
            mapping[src] = explicit[src]
        elif src in tgt:
            mapping[src] = src
        elif two_way:
            mapping[src] = others[0]
    missing = [s for s in source_labels if s not in mapping]
    if missing:
        raise UsageError(f"cannot map the source labels ({', '.join(source_labels)}) onto target {target} "
                         f"({', '.join(tgt)}): no rule for {', '.join(missing)}. Pass --label-map "
                         f"{target}:{missing[0]}=DST,... (DST one of {', '.join(tgt)}) for each of them.")
    return mapping


# ------------------------------------------------------------------------------------------------ loading
def _to_ids(raw_values: list, labels: tuple[str, ...] | None, id_names: tuple[str, ...] | None, where: str,
            extra_synonyms: dict[str, str] | None = None) -> tuple[list[int | None], tuple[str, ...]]:
    """Gold labels -> class ids (None: no gold label). `labels` fixes the label set (else it is inferred from
    the strings); `id_names` names integer labels (the Hub's ClassLabel names, or the declared labels)."""
    syn = extra_synonyms or {}
    names: list[str | None] = []
    for i, raw in enumerate(raw_values):
        if raw is None or isinstance(raw, bool):
            names.append(None)
            continue
        text = str(raw).strip()
        if text.lower() in UNLABELED:
            names.append(None)
            continue
        number = raw if isinstance(raw, int) else (int(text) if re.fullmatch(r"-?\d+", text) else None)
        if number is not None:
            if number < 0:
                names.append(None)
                continue
            table = id_names or labels
            if table is None:
                raise UsageError(f"{where} row {i + 1}: label '{raw}' is a number; name the classes with "
                                 "--target-set NAME.labels=entailment,not_entailment (in class-id order).")
            if number >= len(table):
                raise UsageError(f"{where} row {i + 1}: label {number} is out of range for labels "
                                 f"({', '.join(table)}).")
            names.append(canonical_label(syn.get(str(table[number]).lower(), table[number])))
        else:
            names.append(canonical_label(syn.get(text.lower(), text)))
    found = {n for n in names if n is not None}
    if labels is None:
        labels = tuple(sorted(found, key=lambda n: (LABEL_ORDER.index(n) if n in LABEL_ORDER else len(LABEL_ORDER), n)))
        if len(labels) < 2:
            raise UsageError(f"{where}: found {len(labels)} label value(s) ({', '.join(labels) or 'none'}); a "
                             "target needs two or more classes. Check --target-set NAME.label_column.")
    stray = sorted(found - set(labels))
    if stray:
        raise UsageError(f"{where}: label(s) {', '.join(stray)} are not in the target's labels "
                         f"({', '.join(labels)}). Declare them with --target-set NAME.labels=... .")
    index = {n: k for k, n in enumerate(labels)}
    return [None if n is None else index[n] for n in names], tuple(labels)


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
    from sftune.data import _md5, _read_table

    path, opts, defn = spec.file, spec.options, spec.definition
    columns = tuple(opts["columns"]) if opts.get("columns") else None
    task = get_task(defn.glue_task) if defn and defn.glue_task else None
    table = _read_table(path, columns, "\t" if task and task.dir_split_column and path.suffix == ".txt" else None)
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
    ids, labels = _to_ids(table[label_col], labels, labels, where)
    ds = _build(table, text_cols, ids)
    origin = {"kind": "file", "path": str(path.resolve()), "md5": _md5(path), "rows": len(table),
              "text_columns": list(text_cols), "label_column": label_col}
    if len(table) != rows:
        origin["file_rows"] = rows
    return TargetData(spec.name, labels, ds, spec.options.get("split") or "file", origin, len(table) - len(ds))


def _load_glue_dir(spec: TargetSpec, data_dir: Path) -> TargetData:
    from sftune.data import _md5, dir_split_table

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
    ids, labels = _to_ids(table[task.dir_label], labels, labels, str(path))
    origin = {"kind": "glue-dir", "path": str(path.resolve()), "md5": _md5(path), "rows": len(table)}
    if task.dir_split_column:
        origin["split_column"] = {task.dir_split_column: task.dir_split_values[split]}
    ds = _build(table, task.dir_text, ids)
    return TargetData(spec.name, labels, ds, split, origin, len(table) - len(ds))


def load_hub(dataset: str, config: str | None, split: str, parquet_fallback: bool, hint: str):
    """One split of a Hub dataset; network and offline failures become one UsageError."""
    import datasets

    datasets.disable_progress_bars()
    attempts = [{}] + ([{"revision": "refs/convert/parquet"}] if parquet_fallback else [])
    error: Exception | None = None
    for extra in attempts:
        try:
            return datasets.load_dataset(dataset, config, split=split, **extra)
        except Exception as e:  # network, offline mode, script datasets, missing split
            error = error or e
    name = dataset + (f"/{config}" if config else "")
    raise UsageError(f"cannot load {name} split {split} from the Hugging Face Hub ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:160] if str(error) else ''}). {hint}")


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
    ids, labels = _to_ids(table[defn.hub_label], labels, id_names or labels, where)
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


# --------------------------------------------------------------------------------------------- evaluating
def source_labels_of(task_name: str) -> tuple[str, ...] | None:
    return get_task(task_name).label_names


@torch.no_grad()
def predict(model, tokenizer, ds, task_name: str, max_length: int, batch_size: int,
            device) -> tuple[list, torch.Tensor]:
    """Source-label probabilities for every row of `ds` (float32, in row order)."""
    from sftune.data import make_loader, tokenize

    encoded = tokenize(ds, tokenizer, get_task(task_name), max_length)
    idxs, probs = [], []
    for batch in make_loader(encoded, tokenizer, batch_size):
        batch = dict(batch)
        idxs += batch.pop("idx").tolist()
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        probs.append(logits.softmax(-1).cpu())
    return idxs, torch.cat(probs)


def score(target: TargetData, source_labels: tuple[str, ...], mapping: dict[str, str], probs: torch.Tensor,
          idxs: list[int]) -> tuple[dict, list[dict]]:
    """Metrics and per-example rows for one target: argmax over the source labels, then the mapping."""
    gold = [target.labels[y] for y in target.dataset["label"]]
    src_pred = [source_labels[k] for k in probs.argmax(-1).tolist()]
    mapped = [mapping[s] for s in src_pred]
    correct = sum(g == m for g, m in zip(gold, mapped))
    confusion = {g: {p: 0 for p in target.labels} for g in target.labels}
    for g, m in zip(gold, mapped):
        confusion[g][m] += 1
    gold_counts, mapped_counts, src_counts = Counter(gold), Counter(mapped), Counter(src_pred)
    n = len(gold)
    summary = {
        "split": target.split,
        "data": target.origin,
        "examples": n,
        "dropped_unlabelled": target.dropped,
        "labels": list(target.labels),
        "label_map": dict(mapping),
        "accuracy": correct / n if n else 0.0,
        "correct": correct,
        "counts": {"gold": {c: gold_counts.get(c, 0) for c in target.labels},
                   "predicted": {c: mapped_counts.get(c, 0) for c in target.labels},
                   "predicted_source": {c: src_counts.get(c, 0) for c in source_labels}},
        "per_class_accuracy": {c: (confusion[c][c] / gold_counts[c]) if gold_counts.get(c) else None
                               for c in target.labels},
        "confusion": confusion,
    }
    rows = [{"idx": i, "label": g, "source_prediction": s, "prediction": m, "correct": g == m,
             "probabilities": p} for i, g, s, m, p in zip(idxs, gold, src_pred, mapped, probs.tolist())]
    return summary, rows


def device_for(cpu: bool) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def evaluate_run(run: RunDir, source: str, targets: list[TargetData], mappings: dict[str, dict[str, str]],
                 out_dir: Path, on_target=None, reuse: bool = False) -> dict:
    """Evaluate the run's model/ on every target; write out_dir/transfer.json and out_dir/transfer/*.jsonl.
    Targets evaluated before stay in transfer.json. With `reuse`, a target already there with the same data,
    split and mapping is not evaluated again (a resumed sweep). `on_target(name, entry, cached)` reports."""
    from sftune.models import load_model, load_tokenizer
    from sftune.run import stored_config

    cfg = stored_config(run)
    task = get_task(cfg.task)
    labels = task.label_names
    doc_path = out_dir / "transfer.json"
    doc = read_json(doc_path) or {}
    results = read_json(run.results) or {}
    doc.update({"run_dir": str(run.path), "source": source, "task": cfg.task, "source_labels": list(labels),
                "model": cfg.model.name, "method": cfg.method.name, "seed": cfg.train.seed,
                "in_domain": results.get("metrics", {})})
    entries = dict(doc.get("targets") or {})
    loaded: tuple | None = None
    for target in targets:
        old = entries.get(target.name)
        if reuse and old and (out_dir / old.get("predictions", "-")).is_file() and \
                (old.get("data"), old.get("split"), old.get("label_map")) == \
                (target.origin, target.split, mappings[target.name]):
            if on_target:
                on_target(target.name, old, True)
            continue
        if loaded is None:  # only when something needs evaluating
            device = device_for(cfg.train.cpu)
            source_model = str(run.model)
            if not run.model.is_dir() and (run.path / "adapter").is_dir():  # a LoRA run without model/
                source_model = cfg.model.name
            model = load_model(source_model, task.num_labels, labels, cfg.model.trust_remote_code)
            if source_model != str(run.model):
                from sftune.methods.lora import load_adapter

                model = load_adapter(model, run.path / "adapter")
            loaded = (load_tokenizer(source_model, cfg.model.trust_remote_code), model.to(device).eval(), device)
        tokenizer, model, device = loaded
        t0 = time.time()
        idxs, probs = predict(model, tokenizer, target.dataset, cfg.task, cfg.data.max_length,
                              cfg.data.eval_batch_size, device)
        summary, rows = score(target, labels, mappings[target.name], probs, idxs)
        rel = Path("transfer") / f"{target.name}.jsonl"
        atomic_write_text(out_dir / rel, "".join(json.dumps(r) + "\n" for r in rows))
        summary.update(predictions=str(rel), seconds=round(time.time() - t0, 3),
                       evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        entries[target.name] = summary
        if on_target:
            on_target(target.name, summary, False)
    doc["targets"] = entries
    doc["metrics"] = flat_metrics(entries)
    atomic_write_json(doc_path, doc)
    return doc


def flat_metrics(entries: dict[str, dict]) -> dict[str, float]:
    """{"rte/accuracy": ...}: the shape sweeps aggregate (mean ± std over seeds)."""
    return {f"{name}/accuracy": e["accuracy"] for name, e in entries.items()}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
