"""Search domains (Choice, IntRange, Uniform, LogUniform) and the field checks every spec class uses.

A check that fails raises `SpecError`, whose one-line message names the field, the value and
what is allowed; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union


class SpecError(ValueError):
    """A user's experiment is invalid: names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")


# --- domains a search parameter can take -------------------------------------------------


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class Choice:
    """One of a few values (sampled by TPE as a categorical)."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        if not options:
            raise SpecError("Choice", options, "give at least one option")
        if len(set(options)) != len(options):
            raise SpecError("Choice", options, "options must be distinct")
        object.__setattr__(self, "options", tuple(options))

    def __contains__(self, value: object) -> bool:
        return value in self.options

    def __repr__(self) -> str:  # as it is written in an experiment file, so a repr loads back
        return f"Choice({', '.join(map(repr, self.options))})"


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            check_type(f"IntRange.{name}", getattr(self, name), int)
        if self.low > self.high:
            raise SpecError("IntRange", (self.low, self.high), "low must be <= high")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            check_type(f"{type(self).__name__}.{name}", getattr(self, name), float)
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.low <= self.high:
            raise SpecError(type(self).__name__, (self.low, self.high), "low must be <= high")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
    """A float drawn log-uniformly from [low, high]; both must be > 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise SpecError("LogUniform.low", self.low, "must be > 0")


Domain = Choice | IntRange | Uniform


# --- generic validation ------------------------------------------------------------------


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a tuple of {_describe(typing.get_args(hint)[0])}"
    if origin in (dict, Mapping):
        key, value = typing.get_args(hint)
        return f"a dict of {_describe(key)} -> {_describe(value)}"
    if hint is type(None):
        return "None"
    if hint is float:
        return "a number"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    if origin in (dict, Mapping):
        key, item = typing.get_args(hint)
        return isinstance(value, Mapping) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_type(field: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise SpecError(field, value, f"expected {_describe(hint)}")


def require(field: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise SpecError(field, value, allowed)


SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
              "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(field: str, text: str) -> int:
    """Bytes in a size such as `4GB`, `500MB`, `1.5G`, `2GiB` or `0` (any case; KB/MB/GB/TB
    are powers of 1000, KiB/MiB/GiB/TiB of 1024); a `SpecError` naming `field` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise SpecError(field, text, "a size such as 4GB, 500MB or 0 (a number of bytes, "
                                     "with an optional unit: KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    return int(float(match[1]) * SIZE_UNITS[(match[2] or "").lower()])


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(field: str, value: str | float) -> float:
    """Seconds in a duration such as `90s`, `10m`, `2h`, `1h30m`, `1.5h` or a number of seconds;
    a `SpecError` naming `field` otherwise (and for zero or less)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d*)?)\s*([smhd]?)", text)
        joined = "".join(f"{n}{u}" for n, u in parts)
        if not parts or joined != re.sub(r"\s+", "", text) or (len(parts) > 1 and not all(u for _, u in parts)):
            raise SpecError(field, value, "a duration such as 90s, 10m, 2h or 1h30m (or a number of seconds)")
        seconds = sum(float(n) * DURATION_UNITS[u or "s"] for n, u in parts)
    if not seconds > 0:
        raise SpecError(field, value, "a duration above zero, such as 90s, 10m or 2h")
    return seconds


def spec_class(cls: type) -> type:
    """Make `cls` a frozen keyword-only dataclass whose constructor checks names and types.

    An unknown keyword (a typo) becomes a `SpecError` that lists the allowed fields and
    suggests the closest one; every value is checked against its annotation before the
    class's own `__post_init__` checks ranges.
    """
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    generated_init = cls.__init__

    @functools.wraps(generated_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            raise SpecError(cls.__name__, args, "give every field by name, e.g. name=...")
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SpecError(f"{cls.__name__}.{key}", kwargs[key],
                                f"unknown field; {hint}allowed: {', '.join(names)}")
        for key, value in kwargs.items():
            if isinstance(value, list):  # lists read naturally in a data file; store tuples
                value = kwargs[key] = tuple(value)
            check_type(f"{cls.__name__}.{key}", value, hints[key])
        generated_init(self, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def check_values(field: str, domain: Any, ok: typing.Callable[[Any], bool], allowed: str) -> None:
    for value in domain.options if isinstance(domain, Choice) else (domain,):
        require(field, value, ok(value), allowed)


def check_bounds(field: str, domain: Any, low: float, high: float) -> None:
    if isinstance(domain, Choice):
        values: tuple[Any, ...] = domain.options
    elif isinstance(domain, (IntRange, Uniform)):
        values = (domain.low, domain.high)
    else:
        values = (domain,)
    for value in values:
        require(field, value, isinstance(value, (int, float)) and low <= value <= high,
                 f"must lie in [{low:g}, {high:g}]")
