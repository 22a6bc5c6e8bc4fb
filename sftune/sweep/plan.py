"""A sweep's runs: methods x grid assignments x seeds, each validated and named.

Every run's configuration is built by `sftune.run_tree.training_tree` and validated with `sftune.config.build`
up front (a typo fails before anything runs); the run then trains from exactly that configuration (the runner
hands it to `sftune train --config`). Runs are named deterministically (see `Run.rel`):

    OUTPUT_DIR/TASK/METHOD/SLUG/seed-S        e.g. sweeps/x/rte/dps-mix/p=0.3,ur=0.1/seed-1

SLUG is `key=value` for each grid key that applies to the method, in the order the grid gives them,
joined by commas (`default` with no grid). A key is its last dotted part (`train.lr` -> `lr`; `reg.mixout.p`
-> `mixout.p`), or the full key where two keys would share it. A value is the resolved, typed value
(`2e-5`, `0.00002` and `2.0e-05` all give `lr=2e-05`). Characters outside `A-Za-z0-9._+=,-` become `_`;
a slug longer than 64 characters is cut and ends with 8 hex digits of its SHA-1.

A `method.X` key (in a grid or `--set`) applies only to the sweep's methods that have option X; a key that
none of them has is an error. `reg.NAME.OPTION` grid keys add the regulariser NAME to every run.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftune.config import build
from sftune.errors import UsageError
from sftune.registry import option_names
from sftune.run_tree import OPTIONS, training_tree
from sftune.sweep.spec import SweepSpec, text

SLUG_MAX = 64


@dataclass
class Run:
    method: str
    params: list[tuple[str, str]]  # the grid assignment that applies to this method: (dotted key, value text)
    labels: dict[str, str]  # short key -> resolved value, as in the slug
    seed: int
    slug: str
    rel: Path  # TASK/METHOD/SLUG/seed-S, relative to the output directory
    config: dict  # the resolved configuration (RunConfig.to_dict()): the run trains from exactly this
    args: list[str]  # the equivalent `sftune train` arguments (for people: --dry-run shows them)

    @property
    def config_id(self) -> tuple[str, str]:
        return self.method, self.slug


def _applies(key: str, method: str, options: dict[str, set[str]]) -> bool:
    if not key.startswith("method.") or key == "method.mask_mode":
        return True
    name = key.split(".", 1)[1]
    if not any(name in opts for opts in options.values()):
        return True  # nobody has it: let build() report the unknown key with its did-you-mean
    return name in options[method]


def assignments(spec: SweepSpec, method: str, options: dict[str, set[str]]) -> list[list[tuple[str, str]]]:
    """The grid points for `method`: the product of the axes, restricted to the keys that apply to it."""
    dims = []
    for axis in spec.axes:
        idx = [i for i, k in enumerate(axis.keys) if _applies(k, method, options)]
        if not idx:
            continue
        values = list(dict.fromkeys(tuple(v[i] for i in idx) for v in axis.values))
        dims.append([[(axis.keys[i], v[j]) for j, i in enumerate(idx)] for v in values])
    return [[kv for part in combo for kv in part] for combo in itertools.product(*dims)]


def short_keys(keys: list[str]) -> dict[str, str]:
    def short(k: str) -> str:
        parts = k.split(".")
        return ".".join(parts[1:]) if parts[0] == "reg" else parts[-1]

    shorts = [short(k) for k in keys]
    return {k: (s if shorts.count(s) == 1 else k) for k, s in zip(keys, shorts)}


def label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(label_value(v) for v in value)
    return str(value)


def lookup(config: dict, key: str) -> Any:
    parts = key.split(".")
    if parts[0] == "reg":
        entry = next((r for r in config.get("regs", []) if r.get("name") == parts[1]), {})
        return entry.get(parts[2])
    node: Any = config
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def make_slug(labels: dict[str, str]) -> str:
    if not labels:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(f"{k}={v}" for k, v in labels.items()))
    if len(slug) > SLUG_MAX:
        slug = slug[: SLUG_MAX - 9] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug


class Planner:
    """Builds the config tree of one run with `sftune.run_tree.training_tree`, as `sftune train` does from the
    same options."""

    def __init__(self, spec: SweepSpec):
        from sftune.presets import load_preset

        self.spec = spec
        self.preset = load_preset(spec.preset) if spec.preset else None
        self.options = option_names(spec.methods)

    def tree(self, method: str, params: list[tuple[str, str]], seed: int) -> dict:
        s = self.spec
        options = {OPTIONS[name][1]: value for name, value in s.options.items()}
        options["data.stratified"] = True if s.options.get("stratified") else None
        options.update({"train.seed": seed, "method.mask_mode": s.mask_mode,
                        "model.trust_remote_code": True if s.trust_remote_code else None})
        return training_tree(s.model, s.task, method, preset=self.preset, options=options,
                             regs=self.all_regs(params), sets=dict(self.all_sets(method, params)),
                             sets_from="the sweep's set/grid entries")

    def all_sets(self, method: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        fixed = [(k, v) for k, v in self.spec.sets if _applies(k, method, self.options)]
        return fixed + [(k, v) for k, v in params if not k.startswith("reg.")]

    def all_regs(self, params: list[tuple[str, str]]) -> list[str]:
        grid: dict[str, list[str]] = {}
        for key, value in params:
            if key.startswith("reg."):
                _, name, opt = key.split(".")
                if "," in value:
                    raise UsageError(f"grid value '{value}' for {key}: regulariser values cannot hold commas.")
                grid.setdefault(name, []).append(f"{opt}={value}")
        return list(self.spec.regs) + [f"{name}:{','.join(items)}" for name, items in grid.items()]

    def args(self, method: str, params: list[tuple[str, str]], seed: int) -> list[str]:
        """The `sftune train` command line equivalent to the run's configuration (shown by --dry-run)."""
        s = self.spec
        args = [s.model, s.task, "--method", method]
        if s.preset:
            args += ["--preset", s.preset]
        if s.mask_mode:
            args += ["--mask-mode", s.mask_mode]
        if s.trust_remote_code:
            args += ["--trust-remote-code"]
        for name, value in s.options.items():
            if name == "stratified":
                args += ["--stratified"] if value else []
            elif value is not None:
                args += [OPTIONS[name][0], text(value)]
        for r in self.all_regs(params):
            args += ["--reg", r]
        for key, value in self.all_sets(method, params):
            args += ["--set", f"{key}={value}"]
        return args + ["--seed", str(seed)]


def expand(spec: SweepSpec) -> list[Run]:
    """Every run of the sweep, validated (first problem -> UsageError, exit 2) and named."""
    planner = Planner(spec)
    for key, _ in spec.sets:
        if key.startswith("reg."):
            raise UsageError(f"--set '{key}': regulariser options go in --reg NAME:OPTION=VALUE (or a grid).")
    shorts = short_keys(list(dict.fromkeys(k for a in spec.axes for k in a.keys)))
    runs: list[Run] = []
    seen: set[Path] = set()
    for method in spec.methods:
        for params in assignments(spec, method, planner.options):
            for seed in spec.seeds:
                try:
                    cfg = build(planner.tree(method, params, seed)).to_dict()
                except UsageError as e:
                    given = ",".join(f"{k}={v}" for k, v in params) or "no grid values"
                    raise UsageError(f"{method} with {given}: {e}") from None
                labels = {shorts[k]: label_value(lookup(cfg, k)) for k, _ in params}
                slug = make_slug(labels)
                rel = Path(spec.task) / method / slug / f"seed-{seed}"
                if rel in seen:
                    raise UsageError(f"two grid points resolve to the same run {rel}; remove the duplicate value.")
                seen.add(rel)
                runs.append(Run(method, params, labels, seed, slug, rel, cfg, planner.args(method, params, seed)))
    return runs
