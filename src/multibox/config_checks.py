"""Checks of config values: :class:`ConfigError`, the allowed ranges of numeric settings (:class:`_Range`,
:func:`_check_ranges`) and the conversion of YAML values to a dataclass's annotated field types (:func:`_build`),
with messages that name the setting (``train.lr``). :mod:`multibox.config` declares the dataclasses that use them."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from multibox.user_input import short


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of its range; the message names it (``train.lr``)."""


@dataclass(frozen=True)
class _Range:
    """``low <= x <= high`` (``<`` where open); None: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def contains(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return self.high is None or (x < self.high or (not self.high_open and x == self.high))


_POSITIVE = _Range(0, low_open=True)
_AT_LEAST_1 = _Range(1)
_NON_NEGATIVE = _Range(0)
_UNIT = _Range(0, 1)  # probabilities, thresholds, factors


def _check_ranges(obj: Any) -> None:
    """Every float finite and every numeric field within ``obj._RANGES`` (tuples: each element)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{obj._SECTION}.{f.name}"
        for x in value if isinstance(value, tuple) else (value,):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"{key} must be a finite number, got {x}")
            allowed = obj._RANGES.get(f.name)
            if allowed is not None and isinstance(x, int | float) and not allowed.contains(x):
                raise ConfigError(f"{key} must be {allowed}, got {short(x)}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp`` (with clear errors)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except (TypeError, ValueError):
                pass
        raise ConfigError(f"{where}: {short(value)} does not fit {tp}")
    if origin is Literal:
        if not isinstance(value, str | int) or value not in args:
            raise ConfigError(f"{where}: {short(value)} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {short(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        return dict(value)
    return _coerce_scalar(value, tp, where)


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {short(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short(value)}")
        return value
    raise TypeError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        what = f"section {where!r}" if where else "the config"
        raise ConfigError(f"{what} must be a mapping of key: value, got {short(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {short(unknown, 200)}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            # An empty section (``train:``, YAML null) means its defaults; anything else must be a mapping.
            kwargs[f.name] = _build(hints[f.name], {} if data[f.name] is None else data[f.name], key)
        else:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    return cls(**kwargs)
