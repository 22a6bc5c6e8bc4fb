"""A sweep's specification: methods, grid axes, seeds and the options every run shares.

The same specification comes from command-line options, a YAML file (`sftune sweep spec.yaml`) or both
(command-line values win; lists such as grids, `--set` and `--reg` add to the file's). Grid presets
(`presets/grids/NAME.yaml`) contribute grid axes first, so a file or `--grid` can replace one of their keys.
`sftune.sweep.plan` expands a specification into its runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.config import parse_reg, parse_set
from sftune.errors import UsageError, did_you_mean, unknown

# Options of `sftune train` a sweep passes to every run (their flags and config keys: sftune.run_tree.OPTIONS).
TRAIN_OPTIONS = ("epochs", "max_steps", "lr", "batch_size", "data_dir", "train_file", "validation_file", "train_size",
                 "stratified")
SPEC_KEYS = ("model", "task", "method", "preset", "mask_mode", "grid", "paired", "grid_preset", "seeds",
             "seed_list", "jobs", "output_dir", "reg", "set", "case_study", *TRAIN_OPTIONS)
FORBIDDEN = {"train.seed": "the sweep sets the seed: use --seeds N or --seed-list",
             "task": "give the task as the TASK argument", "model.name": "give the model as the MODEL argument",
             "method.name": "use --method a,b,c"}
DEFAULT_SEEDS = 3


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
    options: dict[str, Any] = field(default_factory=dict)  # TRAIN_OPTIONS names -> value (None: not given)
    regs: list[str] = field(default_factory=list)  # `--reg` texts
    sets: list[tuple[str, str]] = field(default_factory=list)  # fixed `--set` items
    jobs: int = 1
    case_study: bool = False
    grid_presets: list[str] = field(default_factory=list)
    # Only from the typed --trust-remote-code, never from a sweep file: to_yaml_dict leaves it out, so rerunning
    # OUTPUT_DIR/sweep.yaml asks for the flag again (each run's config records it; train refuses it unrepeated).
    trust_remote_code: bool = False

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
        trust_remote_code=bool(cli.get("trust_remote_code")),
    )


def _reg_text(entry: dict) -> str:
    entry = dict(entry)
    name = entry.pop("name", "")
    return f"{name}:" + ",".join(f"{k}={text(v)}" for k, v in entry.items()) if entry else str(name)
