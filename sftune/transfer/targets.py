"""The evaluation sets `sftune transfer` knows, and the targets a user asks for.

    targets     GLUE rte/qnli/mnli (Hub or a GLUE directory), SICK (Hub or the directory holding SICK.txt),
                SNLI, SciTail (Hub), or any CSV/TSV/JSONL file with a column and label mapping
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.errors import UsageError, did_you_mean, unknown
from sftune.transfer.labels import NLI2, NLI3, canonical_label

# Sources: the training task in the task table (SNLI has MNLI's labels and pair layout, so it trains that head).
SOURCES = {"mnli": "mnli", "snli": "mnli", "sick": "sick"}
SNLI_HUB = "stanfordnlp/snli"


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
