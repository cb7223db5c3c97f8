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
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from metrics_service.declaration import (
    ENV_PREFIX as ENV_PREFIX,
)
from metrics_service.declaration import (
    NONE,
    OFF,
    SETTING_KEY,
    Bounds,
    Setting,
    as_bool,
    as_float,
    as_instance,
    as_int,
    as_lower,
    as_lower_names,
    as_names,
    as_optional_names,
    as_optional_path,
    as_optional_str,
    as_path_or_off,
    as_sample,
    declare,
)
from metrics_service.declaration import (
    ConfigError as ConfigError,
)

FsyncPolicy = Literal["never", "interval", "always"]


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings; each field is declared with `declare` (see SETTINGS)."""

    host: str = field(
        default="127.0.0.1",
        metadata=declare(str.strip, "bind address", flag="--host"),
    )
    port: int = field(
        default=8001,
        metadata=declare(
            as_int, "port", flag="--port", bounds=Bounds(min=0, max=65535)
        ),
    )
    ring_capacity: int = field(
        default=500,
        metadata=declare(
            as_int,
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
    instance: str | None = field(
        default=None,
        metadata=declare(
            as_instance,
            "this collector's name, written into each line as `instance`; unset: "
            "no such key",
        ),
    )
    reject_capacity: int = field(
        default=500,
        metadata=declare(
            as_int,
            "refused ingest requests kept in memory (the quarantine); 0 turns the"
            " quarantine off, its file too",
            bounds=Bounds(min=0, max=1_000_000),
        ),
    )
    reject_jsonl: Path | str | None = field(
        default=None,
        metadata=declare(
            as_path_or_off,
            "the quarantine's JSONL file; unset: `<stem>.rejected.jsonl` beside the"
            " sink; `off`: no file",
        ),
    )
    # ingestion (issue: batches, beacons, ...)
    max_batch: int = field(
        default=1000,
        metadata=declare(as_int, "events per batch", bounds=Bounds(min=1)),
    )
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=declare(
            as_int,
            "bytes per request body, after gzip decompression",
            bounds=Bounds(min=1),
        ),
    )
    max_event_bytes: int = field(
        default=32 * 1024,
        metadata=declare(as_int, "bytes per serialized event", bounds=Bounds(min=1)),
    )
    cors_origins: tuple[str, ...] = field(
        default=("*",),
        metadata=declare(as_names, "comma-separated origins allowed to send events"),
    )
    dedupe_window: int = field(
        default=100_000,
        metadata=declare(
            as_int,
            "recent event_ids remembered for de-duplication; 0 turns it off",
            bounds=Bounds(min=0),
        ),
    )
    allowed_events: frozenset[str] | None = field(
        default=None,
        metadata=declare(
            as_optional_names,
            "comma-separated event names to accept; unset accepts any",
        ),
    )
    taxonomy: Path | None = field(
        default=None,
        metadata=declare(
            as_optional_path,
            "JSON taxonomy file: allowlist plus required metadata keys or a JSON"
            " Schema per event",
        ),
    )
    sample: Mapping[str, float] = field(
        default_factory=dict,
        metadata=declare(
            as_sample,
            "event=rate,... fractions of those events to keep, per visitor",
            bounds=Bounds(min=0, max=1),
            each="rate",
        ),
    )
    redact_keys: frozenset[str] = field(
        default=frozenset(),
        metadata=declare(as_lower_names, "comma-separated metadata keys to redact"),
    )
    # durability
    fsync: FsyncPolicy = field(
        default="interval",
        metadata=declare(
            as_lower,
            "when the sink is flushed to disk",
            bounds=Bounds(choices=("never", "interval", "always")),
        ),
    )
    fsync_interval: float = field(
        default=1.0,
        metadata=declare(
            as_float, "seconds between fsyncs in interval mode", bounds=Bounds(above=0)
        ),
    )
    replay: bool = field(
        default=True,
        metadata=declare(as_bool, "reload the newest events into the ring at start-up"),
    )
    rotate_bytes: int = field(
        default=0,
        metadata=declare(
            as_int,
            "rotate the sink when a write would take it past this size; 0: never",
            bounds=Bounds(min=0),
        ),
    )
    rotate_keep: int = field(
        default=10,
        metadata=declare(
            as_int,
            "rotated segments kept (.jsonl.gz); older ones are deleted",
            bounds=Bounds(min=0),
        ),
    )
    # access control and hardening
    ingest_token: str | None = field(
        default=None,
        metadata=declare(
            as_optional_str, "bearer token required by the ingest endpoints"
        ),
    )
    read_token: str | None = field(
        default=None,
        metadata=declare(
            as_optional_str,
            "bearer token required by every read, wait, stream, reset and /metrics",
        ),
    )
    body_timeout: float = field(
        default=10.0,
        metadata=declare(
            as_float,
            "seconds a request body may take to arrive; then 408",
            bounds=Bounds(above=0),
        ),
    )
    max_waiters: int = field(
        default=1000,
        metadata=declare(
            as_int,
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

    @property
    def rejected_file(self) -> Path | None:
        """The quarantine's file, or None when there is none."""
        if self.reject_capacity <= 0 or self.reject_jsonl == OFF:
            return None
        if isinstance(self.reject_jsonl, Path):
            return self.reject_jsonl
        return self.jsonl.with_name(f"{self.jsonl.stem}.rejected.jsonl")

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
    declared: Setting = f.metadata[SETTING_KEY]  # KeyError: a field without `declare`
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
        if default != NONE:
            default = f"`{default}`"
        cells = [each.var, each.flag or "", default, each.description()]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
