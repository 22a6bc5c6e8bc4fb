"""Options: dataclass fields that carry their help text and their constraints (`option`), the coercion of YAML
and command-line values to the fields' types, the check that reads the constraints, and the typed choice of a
plug-in that a RunConfig holds. The configuration's own sections (sftune.config) use the same fields.

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
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from sftune.errors import UsageError


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


# ---------------------------------------------------------------------------------------------- coercion
def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def coerce(value: Any, annotation: Any) -> Any:
    """Turn a YAML or command-line value into the field's type; raise ValueError with a short reason."""
    base, optional = _strip_optional(annotation)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError("a value is required")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"expected true or false, got '{value}'")
    if base is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got '{value}'")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got '{value}'") from None
    if base is float:
        try:
            out = float(value)  # accepts '2e-5', which YAML 1.1 would read as a string
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got '{value}'") from None
        if not math.isfinite(out):
            raise ValueError(f"expected a finite number, got '{value}'")
        return out
    if base is str:
        return str(value)
    if typing.get_origin(base) is list:
        items = value.split(",") if isinstance(value, str) else list(value)
        (inner,) = typing.get_args(base) or (str,)
        return [coerce(v.strip() if isinstance(v, str) else v, inner) for v in items]
    return value


def coerce_field(section: str, f: dataclasses.Field, value: Any, hints: dict) -> Any:
    """One field's value in its type and within its declaration; else ValueError naming `section.field`."""
    try:
        out = coerce(value, hints[f.name])
    except ValueError as e:
        raise ValueError(f"{section}.{f.name}: {e}") from None
    errors = field_errors(section, f, out)
    if errors:
        raise ValueError(errors[0])
    return out


# ---------------------------------------------------------------------------------------------- checking
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


def plugin_options(options_cls: type, given: dict, prefix: str, unknown_key, errors: list[str]) -> Any:
    """The Options instance of a plug-in from the given values (coerced to the fields' types), adding every
    problem to `errors`: unknown keys (worded by `unknown_key(key)`), values of the wrong type, and what the
    fields' declarations and the class's `check()` refuse (sftune.options)."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values = {}
    for key, value in given.items():
        if key not in fields:
            errors.append(unknown_key(key))
            continue
        try:
            values[key] = coerce_field(prefix, fields[key], value, hints)
        except ValueError as e:
            errors.append(str(e))
    options = options_cls(**values)
    errors += option_errors(options, prefix)
    return options


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
