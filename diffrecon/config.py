"""Typed configuration: dataclasses loaded from TOML, unknown keys rejected with a hint.

The schema is plain stdlib dataclasses. ``from_dict`` builds a dataclass from a (nested) dict and
checks every key, type and range; ``apply_overrides`` applies ``--set section.key=value``
strings; ``to_toml`` writes a config back out, with each field's ``doc`` metadata as a comment.
Nothing outside this module indexes raw config dicts.

Ranges: a field declares its bounds or a check in ``doc(..., minimum=..., maximum=...,
check=...)``; a field that declares no lower bound follows the naming conventions of
``NAMED_MINIMUMS`` (counts of epochs, slices and modes are at least 1; learning rates are never
negative).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, Union

from diffrecon.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

#: ``--set`` overrides: a list of ``section.key=value`` strings, or one such string.
Overrides = str | Iterable[str] | None

#: A value check: None when ``value`` is valid, else what was expected ("a torch device: ...").
Check = Callable[[Any], str | None]

#: Lower bounds of numeric fields by name, for fields that declare none: counts that must be at
#: least 1 (epochs, slices, modes, the stride ``every``), and learning rates and epoch numbers
#: that must not be negative. A ``*`` key holds for every name with its suffix (``probe_modes``).
NAMED_MINIMUMS: dict[str, float] = {
    "epochs": 1, "slices": 1, "*_modes": 1, "every": 1, "lr": 0, "start": 0, "stop": 0,
}


def positive(value: Any) -> str | None:
    """A ``Check`` of a strictly positive number (lengths, apertures, magnifications)."""
    return None if isinstance(value, (int, float)) and value > 0 else "a number > 0"


def nonzero(value: Any) -> str | None:
    """A ``Check`` of a number other than 0 (a step that may go either way)."""
    return None if isinstance(value, (int, float)) and value != 0 else "a non-zero number"


def doc(default: Any, text: str, *, minimum: float | None = None,
        maximum: float | None = None, check: Check | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line description (written into TOML dumps).

    Args:
        minimum: smallest valid value of a numeric field (checked by ``from_dict``).
        maximum: largest valid value of a numeric field.
        check: a further check of the value (see ``Check``), e.g. a device name.
    """
    metadata = {"doc": text, "minimum": minimum, "maximum": maximum, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata, **kwargs
        )
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _minimum(field: dataclasses.Field[Any]) -> float | None:
    """The declared lower bound of ``field``, else the naming convention's (``NAMED_MINIMUMS``)."""
    declared = field.metadata.get("minimum")
    if declared is not None:
        return float(declared)
    if field.name in NAMED_MINIMUMS:
        return NAMED_MINIMUMS[field.name]
    for key, bound in NAMED_MINIMUMS.items():
        if key.startswith("*") and field.name.endswith(key[1:]):
            return bound
    return None


def _range_problem(field: dataclasses.Field[Any], value: Any) -> str | None:
    """None when numeric ``value`` lies within the bounds of ``field`` (NaN within none), else
    what was expected."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    low, high = _minimum(field), field.metadata.get("maximum")
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    kind = "an integer" if isinstance(value, int) else "a number"
    if low is not None and high is not None:
        return f"{kind} in [{low:g}, {high:g}]"
    return f"{kind} >= {low:g}" if low is not None else f"{kind} <= {high:g}"


def _check_value(field: dataclasses.Field[Any], value: Any, where: str) -> None:
    """Raise ConfigError when ``value`` of ``field`` (at key ``where``) is out of its range or
    fails its check; the message names the key, what was expected, the value and the field's
    description."""
    expected = _range_problem(field, value)
    if expected is None and field.metadata.get("check") is not None:
        expected = field.metadata["check"](value)
    if expected is not None:
        text = field.metadata.get("doc")
        raise ConfigError(f"config key '{where}': expected {expected}, found {value!r}"
                          + (f" ({text})" if text else ""))


def _is_optional(hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _convert(value: Any, hint: Any, where: str) -> Any:
    optional, hint = _is_optional(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"config key '{where}': expected a value, found none")
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a table, found {value!r}")
        return from_dict(hint, value, where)
    if origin is dict:
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a table, found {value!r}")
        return {k: _convert(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}': expected a list, found {value!r}")
        return origin(_convert(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint_text = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"config key '{where}': expected one of {list(allowed)}, found {value!r}{hint_text}"
            )
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint)):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"config key '{where}': expected an integer, found {value!r}")
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key '{where}': expected {name}, found {value!r}")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys with a "did you mean"."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _convert(value, hints[key], path)
        if kwargs[key] is not None:
            _check_value(fields[key], kwargs[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config section '{where or cls.__name__}': {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a nested dict (None values dropped, as TOML has no null)."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, dict):
            value = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        if value is not None:
            result[f.name] = value
    return result


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML literal, else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def override_list(overrides: Overrides) -> list[str]:
    """``overrides`` as a list of ``key=value`` strings; a single string is one override."""
    if overrides is None:
        return []
    items = [overrides] if isinstance(overrides, str) else list(overrides)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"overrides: expected 'key=value' strings (e.g. "
                              f"['recon.epochs=50']), found {item!r}")
    return items


def apply_overrides(values: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (or one such string) to a nested dict (in place) and
    return it."""
    for item in override_list(overrides):
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, found '{item}'")
        key, text = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = parse_value(text.strip())
    return values


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors become a ConfigError naming the file."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        value = to_dict(value)
    if isinstance(value, dict):  # inline table (e.g. a list of regularizers)
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def to_toml(config: Any, section: str = "", comments: bool = True,
            notes: dict[str, str] | None = None) -> str:
    """Write a dataclass config as TOML, one table per nested dataclass, with doc comments;
    ``notes`` maps a table's name (``params.probe``) to a comment written above it."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        text = f.metadata.get("doc", "") if comments else ""
        if dataclasses.is_dataclass(value):
            tables.append((f"{section}.{f.name}" if section else f.name, value))
            continue
        if isinstance(value, dict) and all(dataclasses.is_dataclass(v) for v in value.values()):
            for key, item in value.items():
                tables.append((f"{section}.{f.name}.{key}" if section else f"{f.name}.{key}", item))
            continue
        if text:
            lines.append(f"# {text}")
        lines.append(f"{f.name} = {_toml_value(value)}" if value is not None else f"# {f.name} =")
    out = ""
    if section and lines:
        note = (notes or {}).get(section) if comments else None
        out += (f"# {note}\n" if note else "") + f"[{section}]\n"
    out += "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        out += "\n" + to_toml(table, name, comments, notes)
    return out
