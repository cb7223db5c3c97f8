"""How a setting is declared: its parser, bounds and help (settings.py declares each
setting with `declare`, on its Config field)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "METRICS_"


class ConfigError(ValueError):
    """A bad setting; `name` is the variable or flag the user has to fix."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


# -- parsers: a variable's text -> the field's value ----------------------------------


def as_int(raw: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError("", f"expected an integer, got {raw!r}") from None


def as_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError("", f"expected a number, got {raw!r}") from None


def as_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError("", f"expected true or false, got {raw!r}")


def as_names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def as_optional_names(raw: str) -> frozenset[str] | None:
    names = as_names(raw)
    return frozenset(names) if names else None


def as_lower_names(raw: str) -> frozenset[str]:
    return frozenset(name.lower() for name in as_names(raw))


def as_optional_str(raw: str) -> str | None:
    return raw or None


_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def as_instance(raw: str) -> str | None:
    """A collector's name: 1-64 letters, digits, `.`, `_` or `-`; empty for none."""
    name = raw.strip()
    if not name:
        return None
    if not _INSTANCE.fullmatch(name):
        raise ConfigError(
            "", f"must be 1-64 letters, digits, '.', '_' or '-', got {raw!r}"
        )
    return name


def as_optional_path(raw: str) -> Path | None:
    return Path(raw) if raw.strip() else None


OFF = "off"


def as_path_or_off(raw: str) -> Path | str | None:
    """A path; `off` (any case) for none at all; empty for the default."""
    if raw.strip().lower() == OFF:
        return OFF
    return as_optional_path(raw)


def as_lower(raw: str) -> str:
    return raw.strip().lower()


def as_sample(raw: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for part in as_names(raw):
        event, sep, rate = part.partition("=")
        if not sep or not event.strip():
            raise ConfigError("", f"expected event=rate pairs, got {part!r}")
        rates[event.strip()] = as_float(rate)
    return rates


# -- the declaration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a value may be. `problem` words a violation as ConfigError reports it."""

    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    above: float | None = None  # exclusive minimum
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        if self.choices and value not in self.choices:
            return f"must be {either(self.choices)}, got {value!r}"
        if self.min is not None and self.max is not None:
            if not self.min <= value <= self.max:
                return f"must be {self.span()}, got {value}"
        elif self.min is not None and value < self.min:
            return (
                "must not be negative"
                if self.min == 0
                else f"must be at least {self.min}"
            )
        elif self.max is not None and value > self.max:
            return f"must be at most {self.max}"
        if self.above is not None and value <= self.above:
            return f"must be greater than {self.above}"
        return None

    def span(self) -> str:
        """`0..65535`; `between 1 and 10,000,000` once the numbers need separators."""
        assert self.min is not None and self.max is not None
        if max(abs(self.min), abs(self.max)) >= 100_000:
            return f"between {self.min:,} and {self.max:,}"
        return f"{self.min}..{self.max}"

    def describe(self) -> str:
        """The bounds in a few words, for help texts and README."""
        words = []
        if self.choices:
            words.append(either(self.choices))
        if self.min is not None and self.max is not None:
            words.append(self.span())
        elif self.min is not None:
            words.append(f"at least {self.min}")
        elif self.max is not None:
            words.append(f"at most {self.max}")
        if self.above is not None:
            words.append(f"greater than {self.above}")
        return ", ".join(words)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: a `Config` field, its variable and, maybe, its `serve` flag."""

    name: str  # the Config field; the variable is METRICS_<NAME>
    parse: Callable[[str], Any]  # the variable's text -> the value
    help: str  # one line, no markup
    default: Any = None
    flag: str | None = None  # `serve --<flag>`; it wins over the variable
    bounds: Bounds | None = None
    each: str | None = None  # bounds apply to each value of a mapping, called this

    @property
    def var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def dest(self) -> str:
        """The flag's attribute on argparse's namespace."""
        assert self.flag is not None
        return self.flag.removeprefix("--").replace("-", "_")

    def problem(self, value: Any) -> str | None:
        if self.bounds is None:
            return None
        if self.each is None:
            return self.bounds.problem(value)
        for key, item in value.items():
            if self.bounds.problem(item) is not None:
                span = self.bounds.span()
                return f"{self.each} for {key!r} must be in {span}, got {item}"
        return None

    def description(self) -> str:
        """The help with the bounds, e.g. `port (0..65535)`."""
        if self.bounds is None:
            return self.help
        bounds = self.bounds.describe()
        if self.each is not None:
            bounds = f"each {self.each} {bounds}"
        return f"{self.help} ({bounds})"

    def shown_default(self) -> str:
        """The default as one would write it in the variable; `(none)` when unset."""
        return show(self.default)


def declare(
    parse: Callable[[str], Any],
    help: str,
    *,
    flag: str | None = None,
    bounds: Bounds | None = None,
    each: str | None = None,
) -> dict[str, Setting]:
    """A `Config` field's metadata that makes it a setting; the field has the default."""
    return {SETTING_KEY: Setting("", parse, help, flag=flag, bounds=bounds, each=each)}


SETTING_KEY = "setting"


def either(choices: Iterable[str]) -> str:
    *rest, last = choices
    return f"{', '.join(rest)} or {last}" if rest else last


NONE = "(none)"


def show(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={show(v)}" for k, v in value.items()) or NONE
    if isinstance(value, frozenset):
        value = sorted(value)
    if isinstance(value, tuple | list):
        return ",".join(value) or NONE
    return str(value)
