"""Label names of NLI sets: the spellings files use, folded onto canonical names, and gold labels as class ids.
The source -> target mapping of those names is in mapping.py."""

from __future__ import annotations

import re
from typing import Any

from sftune.errors import UsageError

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


def canonical_label(raw: Any) -> str:
    low = str(raw).strip().lower()
    return SYNONYMS.get(low, low)


def gold_label_ids(raw_values: list, labels: tuple[str, ...] | None, id_names: tuple[str, ...] | None,
                   where: str) -> tuple[list[int | None], tuple[str, ...]]:
    """Gold labels -> class ids (None: no gold label). `labels` fixes the label set (else it is inferred from
    the strings); `id_names` names integer labels (the Hub's ClassLabel names, or the declared labels)."""
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
            names.append(canonical_label(table[number]))
        else:
            names.append(canonical_label(text))
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
