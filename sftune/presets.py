"""Presets: YAML files of hyperparameters from the papers, selectable with `--preset NAME`.

A preset file holds

    description: one line
    source: where the numbers come from
    follows: the reference script(s) the preset reproduces exactly (only presets that do)
    config:  {train: {...}, model: {...}, method: {...}}   # every task and method
    tasks:   {rte: {train: {...}}, ...}                     # per task, merged over `config`
    methods: {dps-mix: {model: {...}, method: {...}}, ...}  # per method, merged last

A `methods` section holds what a reference script sets for one method only (DPS's scripts zero the dropout
for DPS Dense/Mix but not for vanilla fine-tuning), so a sweep over several methods with one preset gives
each method its own reference's settings.

Presets live in `presets/` at the top of the repository; the wheel ships them as `sftune/presets/`.
`--preset` also takes a path to a YAML file of the same form.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sftune.config import deep_merge, load_yaml
from sftune.errors import UsageError, unknown


def preset_dirs() -> list[Path]:
    dirs = []
    packaged = Path(str(resources.files("sftune"))) / "presets"  # installed wheel
    source = Path(__file__).resolve().parent.parent / "presets"  # source checkout / editable install
    for d in (packaged, source):
        if d.is_dir() and d not in dirs:
            dirs.append(d)
    return dirs


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    data: dict

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))

    @property
    def follows(self) -> str:
        return str(self.data.get("follows", ""))

    @property
    def tasks(self) -> list[str]:
        return sorted((self.data.get("tasks") or {}).keys())

    @property
    def methods(self) -> list[str]:
        return sorted((self.data.get("methods") or {}).keys())

    def for_task(self, task: str, method: str | None = None) -> dict:
        """The config overrides this preset gives for `task` (its `config`, then its `tasks[task]`) and, when
        `method` is given, for that method (then its `methods[method]`)."""
        base = self.data.get("config") or {}
        per_task = (self.data.get("tasks") or {}).get(task) or {}
        out = deep_merge(base, per_task)
        if method is not None:
            out = deep_merge(out, (self.data.get("methods") or {}).get(method) or {})
        return out


def all_presets() -> dict[str, Preset]:
    found: dict[str, Preset] = {}
    for d in preset_dirs():
        for path in sorted(d.glob("*.yaml")):
            found.setdefault(path.stem, Preset(path.stem, path, {}))
    return found


def load_preset(name_or_path: str) -> Preset:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UsageError(f"preset file {path} does not exist. Check the path, or run 'sftune presets ls'.")
        return _read(path.stem, path)
    table = all_presets()
    if name_or_path not in table:
        raise unknown("preset", name_or_path, table, "Run 'sftune presets ls' to list them.")
    return _read(name_or_path, table[name_or_path].path)


def _read(name: str, path: Path) -> Preset:
    data = load_yaml(path, what="preset")
    extra = set(data) - {"description", "source", "follows", "config", "tasks", "methods", "notes"}
    if extra:
        raise UsageError(f"preset {path}: unknown top-level key(s) {', '.join(sorted(extra))}; "
                         "expected description, source, follows, notes, config, tasks, methods.")
    for key in ("config", "tasks", "methods"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise UsageError(f"preset {path}: '{key}' must be a mapping.")
    from sftune.registry import methods as known_methods  # late: the registry imports every method module

    for method, section in (data.get("methods") or {}).items():
        if method not in known_methods():
            raise unknown(f"method (preset {path}, section methods)", method, known_methods(),
                          "Run 'sftune methods'.")
        if not isinstance(section, dict):
            raise UsageError(f"preset {path}: methods.{method} must be a mapping of config sections "
                             "(model, train, data, method).")
        if "name" in (section.get("method") or {}):
            raise UsageError(f"preset {path}: methods.{method}.method.name is not allowed (the key is the method).")
    return Preset(name, path, data)
