"""Every setting, declared once.

Each `Config` field has its default and, in its metadata (`declare(...)`), how its
variable (METRICS_<NAME>) is parsed, its `serve` flag if it has one, its bounds and
one line of help. `Config.from_env` and `Config.validate`, the `serve` flags and `serve --help`
(cli.py), the warning about unknown METRICS_* variables and README's configuration
table (`markdown_table`) are all made from these declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

FsyncPolicy = Literal["never", "interval", "always"]

ENV_PREFIX = "METRICS_"


class ConfigError(ValueError):
    """A bad setting; `name` is the variable or flag the user has to fix."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


# -- parsers: a variable's text -> the field's value ----------------------------------


def _int(raw: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError("", f"expected an integer, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError("", f"expected a number, got {raw!r}") from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError("", f"expected true or false, got {raw!r}")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _optional_names(raw: str) -> frozenset[str] | None:
    names = _names(raw)
    return frozenset(names) if names else None


def _lower_names(raw: str) -> frozenset[str]:
    return frozenset(name.lower() for name in _names(raw))


def _optional_str(raw: str) -> str | None:
    return raw or None


def _optional_path(raw: str) -> Path | None:
    return Path(raw) if raw.strip() else None


def _lower(raw: str) -> str:
    return raw.strip().lower()


def _sample(raw: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for part in _names(raw):
        event, sep, rate = part.partition("=")
        if not sep or not event.strip():
            raise ConfigError("", f"expected event=rate pairs, got {part!r}")
        rates[event.strip()] = _float(rate)
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
            return f"must be {_either(self.choices)}, got {value!r}"
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
            words.append(_either(self.choices))
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
        return _show(self.default)


def declare(
    parse: Callable[[str], Any],
    help: str,
    *,
    flag: str | None = None,
    bounds: Bounds | None = None,
    each: str | None = None,
) -> dict[str, Setting]:
    """A `Config` field's metadata that makes it a setting; the field has the default."""
    return {_SETTING: Setting("", parse, help, flag=flag, bounds=bounds, each=each)}


_SETTING = "setting"


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings; each field is declared with `declare` (see SETTINGS)."""

    host: str = field(
        default="127.0.0.1",
        metadata=declare(str.strip, "bind address", flag="--host"),
    )
    port: int = field(
        default=8001,
        metadata=declare(_int, "port", flag="--port", bounds=Bounds(min=0, max=65535)),
    )
    ring_capacity: int = field(
        default=500,
        metadata=declare(
            _int,
            "events kept in memory",
            flag="--capacity",
            bounds=Bounds(min=1, max=10_000_000),
        ),
    )
    jsonl: Path = field(
        default=Path("data/metrics.jsonl"),
        metadata=declare(
            Path, "append-only sink file; parent folders are created", flag="--jsonl"
        ),
    )
    # ingestion (issue: batches, beacons, ...)
    max_batch: int = field(
        default=1000,
        metadata=declare(_int, "events per batch", bounds=Bounds(min=1)),
    )
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=declare(
            _int,
            "bytes per request body, after gzip decompression",
            bounds=Bounds(min=1),
        ),
    )
    max_event_bytes: int = field(
        default=32 * 1024,
        metadata=declare(_int, "bytes per serialized event", bounds=Bounds(min=1)),
    )
    cors_origins: tuple[str, ...] = field(
        default=("*",),
        metadata=declare(_names, "comma-separated origins allowed to send events"),
    )
    dedupe_window: int = field(
        default=100_000,
        metadata=declare(
            _int,
            "recent event_ids remembered for de-duplication; 0 turns it off",
            bounds=Bounds(min=0),
        ),
    )
    allowed_events: frozenset[str] | None = field(
        default=None,
        metadata=declare(
            _optional_names, "comma-separated event names to accept; unset accepts any"
        ),
    )
    taxonomy: Path | None = field(
        default=None,
        metadata=declare(
            _optional_path, "JSON taxonomy file: allowlist plus required metadata keys"
        ),
    )
    sample: Mapping[str, float] = field(
        default_factory=dict,
        metadata=declare(
            _sample,
            "event=rate,... fractions of those events to keep, per visitor",
            bounds=Bounds(min=0, max=1),
            each="rate",
        ),
    )
    redact_keys: frozenset[str] = field(
        default=frozenset(),
        metadata=declare(_lower_names, "comma-separated metadata keys to redact"),
    )
    # durability
    fsync: FsyncPolicy = field(
        default="interval",
        metadata=declare(
            _lower,
            "when the sink is flushed to disk",
            bounds=Bounds(choices=("never", "interval", "always")),
        ),
    )
    fsync_interval: float = field(
        default=1.0,
        metadata=declare(
            _float, "seconds between fsyncs in interval mode", bounds=Bounds(above=0)
        ),
    )
    replay: bool = field(
        default=True,
        metadata=declare(_bool, "reload the newest events into the ring at start-up"),
    )
    rotate_bytes: int = field(
        default=0,
        metadata=declare(
            _int,
            "rotate the sink when a write would take it past this size; 0: never",
            bounds=Bounds(min=0),
        ),
    )
    rotate_keep: int = field(
        default=10,
        metadata=declare(
            _int,
            "rotated segments kept (.jsonl.gz); older ones are deleted",
            bounds=Bounds(min=0),
        ),
    )
    # access control and hardening
    ingest_token: str | None = field(
        default=None,
        metadata=declare(
            _optional_str, "bearer token required by the ingest endpoints"
        ),
    )
    read_token: str | None = field(
        default=None,
        metadata=declare(
            _optional_str,
            "bearer token required by every read, wait, stream, reset and /metrics",
        ),
    )
    body_timeout: float = field(
        default=10.0,
        metadata=declare(
            _float,
            "seconds a request body may take to arrive; then 408",
            bounds=Bounds(above=0),
        ),
    )
    max_waiters: int = field(
        default=1000,
        metadata=declare(
            _int,
            "parked /wait requests plus open streams; beyond it 503 with Retry-After",
            bounds=Bounds(min=1),
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read `METRICS_*` variables; keyword overrides (CLI flags) win.

        Raises ConfigError naming the variable (or flag) that is wrong.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for each in SETTINGS:
            if each.var in env:
                try:
                    values[each.name] = each.parse(env[each.var])
                except ConfigError as exc:
                    raise ConfigError(each.var, exc.message) from None
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for each in SETTINGS:
            problem = each.problem(getattr(self, each.name))
            if problem is not None:
                raise ConfigError(each.var, problem)


def _declared(f: dataclasses.Field[Any]) -> Setting:
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = f.default
    declared: Setting = f.metadata[_SETTING]  # KeyError: a field without `declare`
    return dataclasses.replace(declared, name=f.name, default=default)


SETTINGS: tuple[Setting, ...] = tuple(_declared(f) for f in dataclasses.fields(Config))
BY_NAME: Mapping[str, Setting] = {each.name: each for each in SETTINGS}
BY_VAR: Mapping[str, Setting] = {each.var: each for each in SETTINGS}


# -- other METRICS_* variables: read elsewhere, not settings ---------------------------

PURE_PYTHON_VAR = "METRICS_PURE_PYTHON"

OTHER_VARIABLES: Mapping[str, str] = {
    # name (or fnmatch pattern) -> what reads it
    PURE_PYTHON_VAR: "1 runs the Python code instead of the C extension "
    "(same results, slower)",
    "METRICS_E2E_*": "the browser tests' own variables (e2e/)",
}


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per METRICS_* variable that is neither a setting nor known."""
    patterns = [name for name in OTHER_VARIABLES if is_pattern(name)]
    names = [each.var for each in SETTINGS]
    names += [name for name in OTHER_VARIABLES if not is_pattern(name)]
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in names}
    warnings = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in names:
            continue
        if any(fnmatch.fnmatchcase(var, pattern) for pattern in patterns):
            continue
        # Compared without the prefix all names share, so that it does not make
        # every name look close.
        close = difflib.get_close_matches(
            var.removeprefix(ENV_PREFIX).upper(), suffixes, n=1
        )
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        warnings.append(f"unknown setting {var}{hint}")
    return warnings


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


# -- what people read: README's table -------------------------------------------------


def markdown_table() -> str:
    """README's configuration table (tests/test_settings_readme.py keeps them equal)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for each in SETTINGS:
        default = each.shown_default()
        if default != _NONE:
            default = f"`{default}`"
        cells = [each.var, each.flag or "", default, each.description()]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _either(choices: Iterable[str]) -> str:
    *rest, last = choices
    return f"{', '.join(rest)} or {last}" if rest else last


_NONE = "(none)"


def _show(value: Any) -> str:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_show(v)}" for k, v in value.items()) or _NONE
    if isinstance(value, frozenset):
        value = sorted(value)
    if isinstance(value, tuple | list):
        return ",".join(value) or _NONE
    return str(value)
