"""The configuration tree of a training run, built in one place for `train`, `sweep`, `transfer` and
`memprofile` (and `config.build(tree)` then validates it):

    base <- model, task, method names <- preset (config, tasks[TASK], methods[METHOD]) <- options
         <- regularisers (--reg) <- --set

`options` maps dotted config keys to the values of command-line options (None: not given). The options that
several commands share are listed once in `OPTIONS`, with their flag and config key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sftune.config import deep_merge, parse_reg, refuse_remote_code, refuse_remote_code_in_sets, set_dotted
from sftune.presets import Preset, load_preset

# Command-line options shared by the training commands: option name -> (flag, dotted config key).
OPTIONS: dict[str, tuple[str, str]] = {
    "seed": ("--seed", "train.seed"),
    "epochs": ("--epochs", "train.epochs"),
    "max_steps": ("--max-steps", "train.max_steps"),
    "lr": ("--lr", "train.lr"),
    "batch_size": ("--batch-size", "train.batch_size"),
    "data_dir": ("--data-dir", "data.data_dir"),
    "train_file": ("--train-file", "data.train_file"),
    "validation_file": ("--validation-file", "data.validation_file"),
    "train_size": ("--train-size", "data.train_size"),
    "stratified": ("--stratified", "data.stratified"),
    "mask_mode": ("--mask-mode", "method.mask_mode"),
    "report_to": ("--report-to", "train.report_to"),
    "keep_checkpoint": ("--keep-checkpoint", "train.keep_checkpoint"),
    "plots": ("--plots", "train.plots"),
    "trust_remote_code": ("--trust-remote-code", "model.trust_remote_code"),
}


def config_options(**values: Any) -> dict[str, Any]:
    """Option values by name (`lr=2e-5`) -> by config key (`{"train.lr": 2e-5}`); None stays 'not given'."""
    return {OPTIONS[name][1]: value for name, value in values.items()}


def training_tree(model: str, task: str, method: str, *, preset: str | Preset | None = None,
                  options: Mapping[str, Any] | None = None, regs: Iterable[str] = (),
                  sets: Mapping[str, Any] | None = None, base: dict | None = None,
                  sets_from: str = "--set") -> dict:
    """The config tree of one run. `preset` is a name, a YAML path or a loaded Preset; `regs` are `--reg`
    texts (NAME:KEY=VALUE,...); `sets` are dotted keys -> values, applied last (`sets_from` names them in the
    refusal of model.trust_remote_code, which only the command-line flag may turn on)."""
    options = options or {}
    tree: dict = deep_merge(base or {}, {"model": {"name": model}, "task": task, "method": {"name": method}})
    if preset:
        found = load_preset(preset) if isinstance(preset, str) else preset
        found_tree = found.for_task(task, method)
        refuse_remote_code(found_tree, f"preset {found.name}")
        tree = deep_merge(tree, found_tree)
        tree["preset"] = found.name
    for key, value in options.items():
        if value is not None:
            set_dotted(tree, key, value)
    if options.get("train.epochs") is not None and options.get("train.max_steps") is None:
        tree.get("train", {}).pop("max_steps", None)  # an explicit --epochs beats a preset's fixed step count
    parsed = [parse_reg(r) for r in regs]
    if parsed:
        tree["regs"] = list(tree.get("regs") or []) + parsed
    refuse_remote_code_in_sets(sets or {}, sets_from)
    for key, value in (sets or {}).items():
        set_dotted(tree, key, value)
    return tree
