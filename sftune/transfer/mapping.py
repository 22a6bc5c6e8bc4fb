"""Source label -> target label: the rules of the out-of-domain protocol and the user's `--label-map`.

A 3-way source on a 2-way target sends every non-entailment label to the target's non-entailment class; equal
names map to each other; explicit `--label-map` entries win; a label left without a rule is a UsageError.
"""

from __future__ import annotations

from sftune.errors import UsageError, did_you_mean
from sftune.transfer.labels import ENTAILMENT, canonical_label
from sftune.transfer.targets import target_name


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
