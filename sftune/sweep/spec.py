"""A sweep's specification and its expansion into runs: methods x grid assignments x seeds.

The same specification comes from command-line options, a YAML file (`sftune sweep spec.yaml`) or both
(command-line values win; lists such as grids, `--set` and `--reg` add to the file's). Grid presets
(`presets/grids/NAME.yaml`) contribute grid axes first, so a file or `--grid` can replace one of their keys.

Every run is validated up front with `sftune.config.build` (a typo fails before anything runs) and named
deterministically (see `Run.rel`):

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

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.config import build, deep_merge, parse_reg, parse_set, refuse_remote_code, set_dotted
from sftune.errors import UsageError, did_you_mean, unknown

# Options of `sftune train` a sweep passes through: spec key -> (train flag, config key).
TRAIN_OPTIONS: dict[str, tuple[str, str]] = {
    "epochs": ("--epochs", "train.epochs"),
    "max_steps": ("--max-steps", "train.max_steps"),
    "lr": ("--lr", "train.lr"),
    "batch_size": ("--batch-size", "train.batch_size"),
    "data_dir": ("--data-dir", "data.data_dir"),
    "train_file": ("--train-file", "data.train_file"),
    "validation_file": ("--validation-file", "data.validation_file"),
    "train_size": ("--train-size", "data.train_size"),
    "stratified": ("--stratified", "data.stratified"),
}
SPEC_KEYS = ("model", "task", "method", "preset", "mask_mode", "grid", "paired", "grid_preset", "seeds",
             "seed_list", "jobs", "output_dir", "reg", "set", "case_study", *TRAIN_OPTIONS)
FORBIDDEN = {"train.seed": "the sweep sets the seed: use --seeds N or --seed-list",
             "task": "give the task as the TASK argument", "model.name": "give the model as the MODEL argument",
             "method.name": "use --method a,b,c"}
DEFAULT_SEEDS = 3
SLUG_MAX = 64


@dataclass
class Axis:
    """One dimension of the grid: a single key, or several keys whose values are paired (zipped)."""

    keys: tuple[str, ...]
    values: list[tuple[str, ...]]


@dataclass
class SweepSpec:
    model: str
    task: str
    methods: list[str]
    axes: list[Axis]
    seeds: list[int]
    output_dir: Path
    preset: str | None = None
    mask_mode: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # TRAIN_OPTIONS keys -> value
    regs: list[str] = field(default_factory=list)  # `--reg` texts
    sets: list[tuple[str, str]] = field(default_factory=list)  # fixed `--set` items
    jobs: int = 1
    case_study: bool = False
    grid_presets: list[str] = field(default_factory=list)

    def to_yaml_dict(self) -> dict:
        """The spec as a YAML sweep file: `sftune sweep OUTPUT_DIR/sweep.yaml` repeats the sweep."""
        out: dict[str, Any] = {"model": self.model, "task": self.task, "method": list(self.methods)}
        if self.preset:
            out["preset"] = self.preset
        if self.mask_mode:
            out["mask_mode"] = self.mask_mode
        out.update({k: v for k, v in self.options.items() if v is not None and v is not False})
        groups = [{k: [v[i] for v in a.values] for i, k in enumerate(a.keys)} for a in self.axes]
        if groups:  # a list of axes keeps their order (and so the run names) even with paired keys
            out["grid"] = groups if any(len(a.keys) > 1 for a in self.axes) else {k: v for g in groups
                                                                                  for k, v in g.items()}
        if self.regs:
            out["reg"] = list(self.regs)
        if self.sets:
            out["set"] = {k: v for k, v in self.sets}
        out.update(seed_list=list(self.seeds), jobs=self.jobs, output_dir=str(self.output_dir))
        if self.case_study:
            out["case_study"] = True
        return out


@dataclass
class Run:
    method: str
    params: list[tuple[str, str]]  # the grid assignment that applies to this method: (dotted key, value text)
    labels: dict[str, str]  # short key -> resolved value, as in the slug
    seed: int
    slug: str
    rel: Path  # TASK/METHOD/SLUG/seed-S, relative to the output directory
    config: dict  # the resolved configuration (RunConfig.to_dict()) the run will write to config.yaml
    args: list[str]  # `sftune train` arguments, without --output-dir, --format, --resume/--overwrite

    @property
    def config_id(self) -> tuple[str, str]:
        return self.method, self.slug


# -------------------------------------------------------------------------------------------- grid presets
def grid_dirs() -> list[Path]:
    from sftune.presets import preset_dirs

    return [d / "grids" for d in preset_dirs() if (d / "grids").is_dir()]


def grid_presets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in grid_dirs():
        for path in sorted(d.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_grid_preset(name_or_path: str) -> dict:
    """A grid preset: {description, source, notes, methods: [...], grid: {key: [values]}, paired: ...}."""
    from sftune.config import load_yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        table = grid_presets()
        if name_or_path not in table:
            raise unknown("grid preset", name_or_path, table, "They live in presets/grids/.")
        path = table[name_or_path]
    elif not path.is_file():
        raise UsageError(f"grid preset file {path} does not exist. Check the path.")
    data = load_yaml(path, what="grid preset")
    extra = set(data) - {"description", "source", "notes", "methods", "grid", "paired"}
    if extra:
        raise UsageError(f"grid preset {path}: unknown key(s) {', '.join(sorted(extra))}; expected description, "
                         "source, notes, methods, grid, paired.")
    return data


# ------------------------------------------------------------------------------------------------ parsing
def text(value: Any) -> str:
    """A YAML or CLI value as the text `--set` takes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(text(v) for v in value)
    return str(value)


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if key in FORBIDDEN:
        raise UsageError(f"{where} '{key}': {FORBIDDEN[key]}.")
    if key.startswith("reg.") and len(key.split(".")) != 3:
        raise UsageError(f"{where} '{key}': expected reg.NAME.OPTION, e.g. reg.mixout.p.")
    if not key or "." not in key:
        raise UsageError(f"{where} '{key}': expected a dotted key such as train.lr or method.p.")
    return key


def parse_grid_item(item: str, where: str = "--grid") -> Axis:
    """`key=v1,v2,...` -> a one-key axis."""
    key, sep, values = item.partition("=")
    if not sep or not values.strip():
        raise UsageError(f"{where} '{item}': expected key=v1,v2,..., e.g. --grid train.lr=1e-5,2e-5.")
    key = _check_key(key, where)
    return Axis((key,), [(v.strip(),) for v in values.split(",") if v.strip()])


def _yaml_values(key: str, values: Any, where: str) -> list[str]:
    values = values if isinstance(values, list) else [values]
    if not values:
        raise UsageError(f"{where} '{key}': the list of values is empty.")
    return [text(v) for v in values]


def axes_from_mapping(grid: Any, where: str) -> list[Axis]:
    """`{key: [values], ...}`: one axis per key; or a list of such mappings: one axis per mapping, its keys
    paired."""
    if grid is None:
        return []
    if isinstance(grid, list):
        return [paired_axis(g, where) for g in grid]
    if not isinstance(grid, dict):
        raise UsageError(f"{where} must be a mapping of key: [values], e.g. train.lr: [1e-5, 2e-5].")
    return [Axis((_check_key(str(k), where),), [(v,) for v in _yaml_values(k, vs, where)]) for k, vs in grid.items()]


def paired_axis(group: dict | list[str], where: str) -> Axis:
    """Keys whose value lists are zipped: {k1: [a, b], k2: [c, d]} -> (a, c), (b, d)."""
    if isinstance(group, list):  # CLI: ["k1=a,b", "k2=c,d"]
        group = {ax.keys[0]: [v[0] for v in ax.values] for ax in (parse_grid_item(g, where) for g in group)}
    if not isinstance(group, dict) or not group:
        raise UsageError(f"{where} must map keys to equally long lists of values.")
    keys = tuple(_check_key(str(k), where) for k in group)
    columns = [_yaml_values(k, v, where) for k, v in group.items()]
    if len({len(c) for c in columns}) != 1:
        lengths = ", ".join(f"{k}: {len(c)}" for k, c in zip(keys, columns))
        raise UsageError(f"{where}: paired keys need as many values each ({lengths}).")
    return Axis(keys, list(zip(*columns)))


def merge_axes(axes: list[Axis]) -> list[Axis]:
    """A later axis replaces every earlier axis that shares a key with it."""
    out: list[Axis] = []
    for axis in axes:
        out = [a for a in out if not set(a.keys) & set(axis.keys)]
        out.append(axis)
    return out


def parse_seeds(seeds: Any, seed_list: Any, where: str) -> list[int] | None:
    if seeds is not None and seed_list is not None:
        raise UsageError(f"{where}: give either seeds (a count) or seed_list, not both.")
    try:
        if seed_list is not None:
            items = seed_list if isinstance(seed_list, list) else [seed_list]
            out = [int(s) for item in items for s in str(item).split(",") if s.strip()]
            if not out:
                raise ValueError
            if len(set(out)) != len(out):
                raise UsageError(f"{where}: seed_list repeats a seed ({', '.join(map(str, out))}).")
            return out
        if seeds is not None:
            n = int(seeds)
            if n < 1:
                raise ValueError
            return list(range(1, n + 1))
    except (TypeError, ValueError):
        raise UsageError(f"{where}: seeds must be a positive count and seed_list integers, "
                         f"got {seeds if seeds is not None else seed_list!r}.") from None
    return None


def _listify(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [s.strip() for item in items for s in str(item).split(",") if s.strip()]


def _sets(value: Any, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        items = [(str(k), text(v)) for k, v in value.items()]
    elif isinstance(value, list):
        items = list(parse_set([str(v) for v in value]).items())
    else:
        raise UsageError(f"{where} must be a mapping (key: value) or a list of key=value.")
    return [(_check_key(k, where), v) for k, v in items]


def make_spec(cli: dict[str, Any], spec_file: Path | None = None) -> SweepSpec:
    """Combine command-line values (`cli`, SPEC_KEYS; None = not given) with an optional YAML sweep file."""
    from sftune.config import load_yaml
    from sftune.tasks import get_task

    doc: dict[str, Any] = {}
    if spec_file is not None:
        doc = load_yaml(spec_file, what="sweep file")
        for key in doc:
            if key not in SPEC_KEYS:
                raise UsageError(f"sweep file {spec_file}: unknown key '{key}'.{did_you_mean(key, SPEC_KEYS)} "
                                 f"Keys: {', '.join(SPEC_KEYS)}.")
    where = f"sweep file {spec_file}" if spec_file else "sweep"

    def pick(key: str) -> Any:
        return cli.get(key) if cli.get(key) is not None else doc.get(key)

    model, task = pick("model"), pick("task")
    if not model or not task:
        raise UsageError("a sweep needs a MODEL and a TASK: sftune sweep MODEL TASK --method M ..., "
                         "or a sweep file that names them.")
    task = get_task(str(task)).name

    preset_names = _listify(doc.get("grid_preset")) + _listify(cli.get("grid_preset"))
    axes: list[Axis] = []
    preset_methods: list[str] = []
    for name in preset_names:
        data = load_grid_preset(name)
        axes += axes_from_mapping(data.get("grid"), f"grid preset {name}")
        paired = data.get("paired") or []
        axes += [paired_axis(g, f"grid preset {name}") for g in (paired if isinstance(paired, list) else [paired])]
        preset_methods += [m for m in _listify(data.get("methods")) if m not in preset_methods]
    axes += axes_from_mapping(doc.get("grid"), f"{where} grid")
    paired = doc.get("paired") or []
    axes += [paired_axis(g, f"{where} paired") for g in (paired if isinstance(paired, list) else [paired])]
    axes += [parse_grid_item(g) for g in cli.get("grid") or []]
    if cli.get("paired"):
        axes.append(paired_axis(list(cli["paired"]), "--paired"))
    axes = merge_axes(axes)

    methods = _listify(cli.get("method")) or _listify(doc.get("method")) or preset_methods or ["full"]
    methods = list(dict.fromkeys(methods))
    seeds = (parse_seeds(cli.get("seeds"), cli.get("seed_list"), "--seeds/--seed-list")
             or parse_seeds(doc.get("seeds"), doc.get("seed_list"), where)
             or list(range(1, DEFAULT_SEEDS + 1)))
    jobs = pick("jobs") if pick("jobs") is not None else 1
    try:
        jobs = int(jobs)
        if jobs < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"--jobs must be a positive integer, got {jobs!r}.") from None
    output = pick("output_dir") or Path("sweeps") / f"{Path(str(model).rstrip('/')).name or 'model'}-{task}"
    regs = [text(r) if not isinstance(r, dict) else _reg_text(r) for r in (doc.get("reg") or [])]
    regs += list(cli.get("reg") or [])
    for r in regs:
        parse_reg(r)  # a malformed --reg fails here, in one line
    return SweepSpec(
        model=str(model), task=task, methods=methods, axes=axes, seeds=seeds, output_dir=Path(str(output)),
        preset=pick("preset"), mask_mode=pick("mask_mode"),
        options={k: pick(k) for k in TRAIN_OPTIONS}, regs=regs,
        sets=_sets(doc.get("set"), f"{where} set") + _sets(list(cli.get("set") or []), "--set"),
        jobs=jobs, case_study=bool(pick("case_study")), grid_presets=preset_names,
    )


def _reg_text(entry: dict) -> str:
    entry = dict(entry)
    name = entry.pop("name", "")
    return f"{name}:" + ",".join(f"{k}={text(v)}" for k, v in entry.items()) if entry else str(name)


# ------------------------------------------------------------------------------------------------ expansion
def method_options(methods: list[str]) -> dict[str, set[str]]:
    from sftune.registry import get_method

    return {m: {f.name for f in dataclasses.fields(get_method(m).Options)} for m in methods}


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
    """Builds the config tree of one run exactly as `sftune train` builds it from the same arguments."""

    def __init__(self, spec: SweepSpec):
        from sftune.presets import load_preset

        self.spec = spec
        self.preset = load_preset(spec.preset) if spec.preset else None
        self.options = method_options(spec.methods)

    def tree(self, method: str, params: list[tuple[str, str]], seed: int) -> dict:
        s = self.spec
        tree: dict = {"model": {"name": s.model}, "task": s.task, "method": {"name": method}}
        if self.preset:
            preset_tree = self.preset.for_task(s.task, method)
            refuse_remote_code(preset_tree, f"preset {self.preset.name}")
            tree = deep_merge(tree, preset_tree)
            tree["preset"] = self.preset.name
        for key, value in s.options.items():
            if key == "stratified":
                if value:
                    set_dotted(tree, "data.stratified", True)
            elif value is not None:
                set_dotted(tree, TRAIN_OPTIONS[key][1], text(value))
        set_dotted(tree, "train.seed", seed)
        if s.mask_mode:
            set_dotted(tree, "method.mask_mode", s.mask_mode)
        if s.options.get("epochs") is not None and s.options.get("max_steps") is None:
            tree["train"].pop("max_steps", None)  # as `train`: an explicit --epochs beats a preset's steps
        regs = [parse_reg(r) for r in self.all_regs(params)]
        if regs:
            tree["regs"] = list(tree.get("regs") or []) + regs
        sets: dict = {}
        for key, value in self.all_sets(method, params):
            set_dotted(sets, key, value)
            set_dotted(tree, key, value)
        refuse_remote_code(sets, "the sweep's set/grid entries")
        return tree

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
        s = self.spec
        args = [s.model, s.task, "--method", method]
        if s.preset:
            args += ["--preset", s.preset]
        if s.mask_mode:
            args += ["--mask-mode", s.mask_mode]
        for key, value in s.options.items():
            if key == "stratified":
                args += ["--stratified"] if value else []
            elif value is not None:
                args += [TRAIN_OPTIONS[key][0], text(value)]
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
