"""Out-of-domain NLI transfer (appendix E): a model trained on a 3-way NLI task (MNLI or SNLI), evaluated on
other NLI sets with its predicted labels mapped onto each target's label set.

    targets.py       what can be evaluated: GLUE rte/qnli/mnli (Hub or a GLUE directory), SICK (Hub or the
                     directory holding SICK.txt), SNLI, SciTail (Hub), or any CSV/TSV/JSONL file with a column
                     and label mapping; `--targets`/`--target-file`/`--target-set` parsed into specs
    labels.py        label spellings folded onto canonical names; gold labels as class ids
    mapping.py       source label -> target label, by name; explicit `--label-map` entries win; a label left
                     without a rule is a UsageError
    target_data.py   each target's rows, read through sftune.data (files, a GLUE directory, the Hub)
    source_model.py  the run's trained model on the targets, through the Trainer's evaluation path
    report.py        argmax over the source labels, then the mapping; accuracy, per-class counts, confusion;
                     RUN_DIR/transfer.json and RUN_DIR/transfer/<target>.jsonl

The command lives in `sftune/cli/transfer.py`; this package does no printing.
"""

from sftune.transfer.labels import NLI2, NLI3, canonical_label
from sftune.transfer.mapping import check_map_scopes, explicit_map, parse_label_maps, resolve_mapping
from sftune.transfer.report import evaluate_run, flat_metrics, score, source_labels_of
from sftune.transfer.target_data import TargetData, load_target, snli_source_files
from sftune.transfer.targets import SOURCES, TARGET_KEYS, TARGETS, TargetSpec, parse_targets, target_name

__all__ = ["NLI2", "NLI3", "SOURCES", "TARGETS", "TARGET_KEYS", "TargetData", "TargetSpec", "canonical_label",
           "check_map_scopes", "evaluate_run", "explicit_map", "flat_metrics", "load_target", "parse_label_maps",
           "parse_targets", "resolve_mapping", "score", "snli_source_files", "source_labels_of",
           "target_name"]
