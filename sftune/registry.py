"""The method registry: `@register` on a class makes it a method of `sftune train --method`.

The registry is the one list of methods: `sftune methods`, `--help`, `presets ls` and docs/methods-table.md
are all generated from it. A new method is one file in `sftune/methods/` plus its test.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass

from sftune.errors import unknown

_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: register a `Method` subclass under its `name`."""
    name = cls.name
    if name in _METHODS and _METHODS[name] is not cls:
        raise RuntimeError(f"two methods are registered as '{name}'")
    _METHODS[name] = cls
    return cls


def _load_all() -> None:
    # Importing every module of sftune.methods runs their @register decorators; no hand-kept list.
    import sftune.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def methods() -> dict[str, type]:
    _load_all()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> type:
    table = methods()
    if name not in table:
        raise unknown("method", name, table, "Run 'sftune methods' to list them.")
    return table[name]


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: object
    help: str


def describe_options(cls: type) -> list[OptionInfo]:
    """The options of a method (fields of its `Options` dataclass) with their help text."""
    out = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(OptionInfo(f.name, type_name, default, f.metadata.get("help", "")))
    return out
