"""The method registry: `@register` on a class makes it a method of `sftune train --method`.

The registry is the one list of methods: `sftune methods`, `--help`, `presets ls`, docs/methods-table.md and
the benchmarks' default method lists (bench/*.py) are all generated from it. A new method is one file in
`sftune/methods/` plus its test (tests/test_new_method.py shows that a toy one needs nothing else).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass

from sftune.errors import unknown

_METHODS: dict[str, type] = {}
_REGULARIZERS: dict[str, type] = {}


def _add(table: dict[str, type], cls: type) -> type:
    if cls.name in table and table[cls.name] is not cls:
        raise RuntimeError(f"two plug-ins are registered as '{cls.name}'")
    table[cls.name] = cls
    return cls


def register(cls: type) -> type:
    """Class decorator: register a `Method` subclass under its `name`."""
    return _add(_METHODS, cls)


def register_regularizer(cls: type) -> type:
    """Class decorator: register a regulariser (a `Hooks` subclass with `name`, `summary`, `Options`)."""
    return _add(_REGULARIZERS, cls)


def _import_package(dotted: str) -> None:
    # Importing every module of the package runs their decorators: no hand-kept list of plug-ins.
    package = importlib.import_module(dotted)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{dotted}.{module.name}")


def methods() -> dict[str, type]:
    _import_package("sftune.methods")
    return dict(sorted(_METHODS.items()))


def method_names(selecting: bool = False) -> list[str]:
    """Registered method names, the dense ones first, then those that select entries every step, each by name;
    `selecting`: only the latter. The benchmarks' default method lists come from here, so a new method is
    benchmarked without editing them."""
    table = methods()
    names = [n for n, cls in table.items() if cls.selects_per_step or not selecting]
    return sorted(names, key=lambda n: (table[n].selects_per_step, n))


def regularizers() -> dict[str, type]:
    _import_package("sftune.regularizers")
    return dict(sorted(_REGULARIZERS.items()))


def get_method(name: str) -> type:
    table = methods()
    if name not in table:
        raise unknown("method", name, table, "Run 'sftune methods' to list them.")
    return table[name]


def get_regularizer(name: str) -> type:
    table = regularizers()
    if name not in table:
        raise unknown("regulariser", name, table, "Run 'sftune methods' to list them.")
    return table[name]


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: object
    help: str


def option_names(methods: list[str]) -> dict[str, set[str]]:
    """Per method name, the names of its own options (`method.NAME` keys): what decides which `method.*` items
    of a sweep or a memory profile over several methods apply to which method."""
    return {m: {f.name for f in dataclasses.fields(get_method(m).Options)} for m in methods}


def describe_options(cls: type) -> list[OptionInfo]:
    """The options of a method (fields of its `Options` dataclass) with their help text."""
    out = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(OptionInfo(f.name, type_name, default, f.metadata.get("help", "")))
    return out
