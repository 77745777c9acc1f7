"""Typed, strict reading of TOML tables into frozen dataclasses.

Every section of a task file is a frozen, keyword-only dataclass. This module turns a parsed TOML table into
one, checking each value against the field's annotation and the bounds in its metadata, and reporting any
mistake as a `TaskError` that names the file, the dotted key, what was found and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class TaskError(ValueError):
    """A task file (or table) is malformed; the message says where, what was found and what was expected."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


def bounds(*, min: float | None = None, max: float | None = None, exclusive_min: bool = False) -> dict[str, Any]:
    """Field metadata for numeric bounds: `x: float = field(default=1.0, metadata=bounds(min=0))`."""
    return {"min": min, "max": max, "exclusive_min": exclusive_min}


# Field metadata for a setting that is each peer's own, not the swarm's: the task hash takes its default
# whatever a file says, so peers that differ in it still mix (a byte cap on a metered link, say).
LOCAL: Final[dict[str, Any]] = {"local": True}


def without_local(value: T) -> T:
    """`value` (a dataclass) with every field marked LOCAL set back to its default."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(value)  # type: ignore[arg-type]
        if f.metadata.get("local") and f.default is not dataclasses.MISSING
    }
    return dataclasses.replace(value, **defaults) if defaults else value  # type: ignore[type-var]


def describe(value: object) -> str:
    """How a found value is named in error messages: its TOML type and a short repr."""
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}" if not isinstance(value, dict) else kind


@dataclasses.dataclass(frozen=True)
class Where:
    """The file and dotted key prefix of the table being read, for error messages."""

    file: str
    prefix: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def child(self, name: str) -> Where:
        return Where(self.file, self.key(name))

    def error(self, name: str, problem: str) -> TaskError:
        return TaskError(self.file, self.key(name), problem)


def read_table(
    cls: type[T],
    table: Mapping[str, Any],
    where: Where,
    *,
    extra: Mapping[str, Any] | None = None,
    ignore: frozenset[str] = frozenset(),
    allowed_hint: str = "",
) -> T:
    """Build dataclass `cls` from `table`; unknown keys (other than `ignore`) are errors.

    `extra` supplies values that do not come from the table (for example a resolved base directory).
    """
    if not isinstance(table, Mapping):
        raise TaskError(where.file, where.prefix, f"found {describe(table)}, expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = dict(extra or {})
    for name, raw in table.items():
        if name in ignore:
            continue
        field = fields.get(name)
        if field is None or name in values:
            known = sorted(set(fields) - set(extra or {}))
            hint = allowed_hint or "expected one of: " + ", ".join(known)
            raise where.error(name, f"unknown key; {hint}")
        values[name] = convert(raw, hints[name], where, name, field.metadata)
    missing = [
        n
        for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise where.error(missing[0], f"missing; expected {expected_text(hints[missing[0]])}")
    return cls(**values)


def expected_text(hint: Any) -> str:
    """A human phrase for what a type annotation accepts."""
    origin = get_origin(hint)
    if hint is bool:
        return "a boolean"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is tuple:
        return f"an array of {expected_text(get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(expected_text(a) for a in get_args(hint) if a is not type(None))
    if origin is dict or hint is dict:
        return "a table"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return str(hint)


def convert(raw: Any, hint: Any, where: Where, name: str, meta: Mapping[str, Any]) -> Any:
    """Check `raw` against annotation `hint` (and numeric bounds in `meta`) and return the typed value."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:  # `X | None`: TOML has no null, so the value must be an X
            return convert(raw, options[0], where, name, meta)
        for option in options:
            try:
                return convert(raw, option, where, name, meta)
            except TaskError:
                continue
        raise where.error(name, f"found {describe(raw)}, expected {expected_text(hint)}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return read_table(hint, raw, where.child(name))
    ok: bool
    value: Any = raw
    if hint is bool:
        ok = isinstance(raw, bool)
    elif hint is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    elif hint is float:
        ok = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
        value = float(raw) if ok else raw
    elif hint is str:
        ok = isinstance(raw, str)
    elif origin is Literal:
        ok = isinstance(raw, str | int) and not isinstance(raw, bool) and raw in get_args(hint)
    elif origin is tuple:
        if not isinstance(raw, list):
            raise where.error(name, f"found {describe(raw)}, expected {expected_text(hint)}")
        item = get_args(hint)[0]
        return tuple(convert(v, item, where, f"{name}[{i}]", meta) for i, v in enumerate(raw))
    elif origin is dict or hint is dict:
        ok = isinstance(raw, dict)
        value = dict(raw) if ok else raw
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported field type {hint!r} for {where.key(name)}")
    if not ok:
        raise where.error(name, f"found {describe(raw)}, expected {expected_text(hint)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_bounds(value, where, name, meta)
    return value


def _check_bounds(value: float, where: Where, name: str, meta: Mapping[str, Any]) -> None:
    low, high = meta.get("min"), meta.get("max")
    if low is not None:
        if meta.get("exclusive_min") and not value > low:
            raise where.error(name, f"found {value!r}, expected a number > {low}")
        if not meta.get("exclusive_min") and value < low:
            raise where.error(name, f"found {value!r}, expected a number ≥ {low}")
    if high is not None and value > high:
        raise where.error(name, f"found {value!r}, expected a number ≤ {high}")
