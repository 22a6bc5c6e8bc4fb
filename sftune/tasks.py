"""The task table: where each task's text and labels live, and how it is scored.

One `Task` per GLUE task, plus SICK (`sick`: 3-way NLI; `sick-r`: its relatedness score as a regression).
`hub_*` fields describe the Hugging Face Hub dataset (`nyu-mll/glue` unless `hub_dataset` says otherwise);
`dir_*` fields describe the file layout of a local directory (the original GLUE TSVs, as in
../shared/data/glue; SICK's single SICK.txt, whose `SemEval_set` column holds the split). Every source is
turned into the same three columns, `text_a`, `text_b` (pair tasks) and `label`, before tokenisation.

A task declares its objective: `classification` (GLUE: a sequence-classification head, encoder or decoder) or
`causal-lm` (instruction data: a causal LM trained on the response tokens, evaluated by validation loss and
perplexity and, at the end and in `sftune eval`, by generating answers scored with the task's `scorer`;
sftune/lm_data.py, causal_lm.py, generation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sftune.errors import unknown


@dataclass(frozen=True)
class Task:
    name: str
    hub_config: str
    hub_text: tuple[str, ...]  # text columns in nyu-mll/glue
    label_names: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...] = ("validation",)
    dir_name: str = ""
    dir_files: dict[str, str] = field(default_factory=dict)  # split -> file name in the task directory
    dir_text: tuple[str, ...] = ()  # text columns in the GLUE TSV
    dir_label: str = "label"
    dir_columns: tuple[str, ...] | None = None  # column names of a headerless TSV (CoLA)
    description: str = ""
    objective: str = "classification"  # or "causal-lm"
    hub_dataset: str = "nyu-mll/glue"
    prompt_field: str = "prompt"  # causal-lm: the row fields of the prompt and the gold response
    response_field: str = "response"
    scorer: str = ""  # causal-lm: how a generated answer is scored (sftune.generation.SCORERS)

    @property
    def is_causal_lm(self) -> bool:
        return self.objective == "causal-lm"
    hub_label: str = "label"
    hub_parquet_fallback: bool = False  # script dataset: also try the Hub's refs/convert/parquet branch
    dir_delimiter: str = "\t"
    dir_split_column: str = ""  # one file holds every split; this column says which (SICK's SemEval_set)
    dir_split_values: dict[str, str] = field(default_factory=dict)  # split -> value in dir_split_column

    @property
    def is_regression(self) -> bool:
        return self.label_names is None and not self.is_causal_lm

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.hub_text) == 2


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
# SICK: TRAIN to train, TRIAL (the official development set) to select, TEST (4,906) evaluated too.
_SICK = dict(hub_dataset="RobZamp/sick", hub_parquet_fallback=True, eval_splits=("validation", "test"),
             dir_name="SICK", dir_files={"train": "SICK.txt", "validation": "SICK.txt", "test": "SICK.txt"},
             dir_text=("sentence_A", "sentence_B"), dir_split_column="SemEval_set",
             dir_split_values={"train": "TRAIN", "validation": "TRIAL", "test": "TEST"})

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("cola", "cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews", "accuracy"), "matthews",
             dir_name="CoLA", dir_files=_DEV, dir_text=("sentence",),
             dir_columns=("source", "label", "original_mark", "sentence"),
             description="grammatical acceptability (Matthews correlation)"),
        Task("sst2", "sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy",
             dir_name="SST-2", dir_files=_DEV, dir_text=("sentence",), description="sentiment (accuracy)"),
        Task("mrpc", "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
             dir_name="MRPC", dir_files=_DEV, dir_text=("#1 String", "#2 String"), dir_label="Quality",
             description="paraphrase (F1 and accuracy)"),
        Task("stsb", "stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"), "spearman",
             dir_name="STS-B", dir_files=_DEV, dir_text=("sentence1", "sentence2"), dir_label="score",
             description="similarity regression 0-5 (Pearson and Spearman)"),
        Task("qqp", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
             dir_name="QQP", dir_files=_DEV, dir_text=("question1", "question2"), dir_label="is_duplicate",
             description="duplicate questions (F1 and accuracy)"),
        Task("mnli", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
             "accuracy", eval_splits=("validation_matched", "validation_mismatched"), dir_name="MNLI",
             dir_files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                        "validation_mismatched": "dev_mismatched.tsv"},
             dir_text=("sentence1", "sentence2"), dir_label="gold_label",
             description="3-way NLI, matched and mismatched dev (accuracy)"),
        Task("qnli", "qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
             dir_name="QNLI", dir_files=_DEV, dir_text=("question", "sentence"),
             description="QA entailment (accuracy)"),
        Task("rte", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
             dir_name="RTE", dir_files=_DEV, dir_text=("sentence1", "sentence2"), description="entailment (accuracy)"),
        Task("sick", "", ("sentence_A", "sentence_B"), ("entailment", "neutral", "contradiction"), ("accuracy",),
             "accuracy", dir_label="entailment_label", **_SICK,
             description="SICK 3-way NLI, TRIAL dev and TEST (accuracy)"),
        Task("sick-r", "", ("sentence_A", "sentence_B"), None, ("pearson", "spearman"), "pearson",
             dir_label="relatedness_score", hub_label="relatedness_score", **_SICK,
             description="SICK relatedness regression 1-5, TRIAL dev and TEST (Pearson and Spearman)"),
        Task("gsm8k", "main", ("question",), None, ("exact_match",), "exact_match", eval_splits=("test",),
             dir_name="gsm8k", dir_files={"train": "train.jsonl", "test": "test.jsonl"}, objective="causal-lm",
             hub_dataset="openai/gsm8k", prompt_field="question", response_field="answer", scorer="gsm8k",
             description="grade-school maths, causal LM; exact match of the final number after ####"),
        Task("instruct", "", ("prompt",), None, ("exact_match",), "exact_match", dir_files={
                 "train": "train.jsonl", "validation": "validation.jsonl"}, objective="causal-lm",
             hub_dataset="", scorer="exact",
             description="your instruction data (JSONL prompt/response or messages), causal LM; exact match"),
    ]
}

# Spellings users type for the same task.
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_m": "mnli", "sick-e": "sick",
           "sick_e": "sick", "sick_r": "sick-r"}


def get_task(name: str) -> Task:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise unknown("task", name, TASKS, "Run 'sftune train --help' for the task list.")
    return TASKS[key]
