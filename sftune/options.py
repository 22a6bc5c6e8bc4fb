"""Options of methods and regularisers: dataclass fields that carry their help text and their constraints, the
check that reads those constraints, and the typed choice of a plug-in that a RunConfig holds.

A leaf module (it imports nothing of sftune but `errors`): plug-ins declare their options with `option()` and
need neither the configuration nor the registry to do so, and `sftune.config.build` validates every option
from the declarations, reporting all problems at once before a model is loaded. What only the model can
decide (a budget larger than the candidates, a target module that does not exist) stays in the plug-in.

    @dataclass
    class Options:
        p: float = option(0.3, "Share kept.", gt=0, le=1)       # 'must be in (0, 1]'
        rule: str = option("model", "...", choices=("model", "reference"))

        def check(self) -> list[str]:                           # optional: rules across fields
            return [] if self.a is None or self.b is None else ["set a or b, not both"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sftune.errors import UsageError

BOUNDS = ("ge", "gt", "le", "lt")


def option(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None, **kwargs) -> Any:
    """A dataclass field carrying its help text (shown by `sftune methods`, `presets show` and the docs) and
    its constraints: `choices`, and bounds ge (>=), gt (>), le (<=), lt (<) on a number (None always passes)."""
    meta = {"help": help, **kwargs}
    meta.update({k: v for k, v in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                 if v is not None})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def expected_range(meta: dict) -> str | None:
    """The bounds of a field in words: 'in [0, 1)', 'at least 1', 'positive'; None when it has none."""
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return ("positive" if low[1] == 0 else f"greater than {_number(low[1])}") if low[0] == "(" else \
            f"at least {_number(low[1])}"
    if high:
        return f"at most {_number(high[1])}" if high[0] == "]" else f"less than {_number(high[1])}"
    return None


def _in_range(value: float, meta: dict) -> bool:
    return (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))


def field_errors(prefix: str, f: dataclasses.Field, value: Any) -> list[str]:
    """What is wrong with one field's value, by its declaration (a value of the wrong type is the coercion's
    business: it is not compared here)."""
    meta = f.metadata
    choices = meta.get("choices")
    if choices and value is not None and value not in choices:
        return [f"{prefix}.{f.name}: expected one of {', '.join(map(str, choices))}, got '{value}'"]
    expected = expected_range(meta)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected and numeric and not _in_range(value, meta):
        return [f"{prefix}.{f.name} must be {expected}, got {value}"]
    return []


def option_errors(options: Any, prefix: str) -> list[str]:
    """Every problem of an Options instance: each field against its declaration, then the class's own
    `check()` (rules across fields), each message naming `prefix` (e.g. 'method', 'reg mixout')."""
    errors = [e for f in dataclasses.fields(options) for e in field_errors(prefix, f, getattr(options, f.name))]
    check = getattr(type(options), "check", None)
    if check is not None:
        errors += [f"{prefix}: {message}" for message in check(options)]
    return errors


def validate(options: Any, prefix: str) -> None:
    """Raise one UsageError naming every problem of `options` (plug-ins built outside `config.build`)."""
    errors = option_errors(options, prefix)
    if errors:
        raise UsageError("invalid options: " + "; ".join(errors))


@dataclass
class PluginChoice:
    """A configured plug-in: its registered name and its validated Options instance."""

    name: str
    options: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.options)}


@dataclass
class MethodChoice(PluginChoice):
    """The configured method: a PluginChoice plus the mask mode (grad or update)."""

    mask_mode: str = "grad"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mask_mode": self.mask_mode, **dataclasses.asdict(self.options)}
