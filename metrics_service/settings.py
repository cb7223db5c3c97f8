from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

FsyncPolicy = Literal["never", "interval", "always"]


class ConfigError(ValueError):
    """A bad setting; `name` is the variable or flag the user has to fix."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8001
    ring_capacity: int = 500
    jsonl: Path = Path("data/metrics.jsonl")
    # ingestion (issue: batches, beacons, ...)
    max_batch: int = 1000
    max_body_bytes: int = 1024 * 1024
    max_event_bytes: int = 32 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    dedupe_window: int = 100_000
    allowed_events: frozenset[str] | None = None
    taxonomy: Path | None = None
    sample: Mapping[str, float] = dataclasses.field(default_factory=dict)
    redact_keys: frozenset[str] = frozenset()
    # durability
    fsync: FsyncPolicy = "interval"
    fsync_interval: float = 1.0
    replay: bool = True
    rotate_bytes: int = 0
    rotate_keep: int = 10
    # access control and hardening
    ingest_token: str | None = None
    read_token: str | None = None
    body_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read `METRICS_*` variables; keyword overrides (CLI flags) win.

        Raises ConfigError naming the variable (or flag) that is wrong.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            var = ENV_PREFIX + field.name.upper()
            if var in env:
                raw = env[var]
                parse = _PARSERS[field.name]
                try:
                    values[field.name] = parse(raw)
                except ConfigError as exc:
                    raise ConfigError(var, exc.message) from None
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        def var(name: str) -> str:
            return ENV_PREFIX + name.upper()

        if not 1 <= self.ring_capacity <= 10_000_000:
            raise ConfigError(
                var("ring_capacity"),
                f"must be between 1 and 10,000,000, got {self.ring_capacity}",
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(var("port"), f"must be 0..65535, got {self.port}")
        for name in ("max_batch", "max_body_bytes", "max_event_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(var(name), "must be at least 1")
        for name in ("dedupe_window", "rotate_bytes", "rotate_keep"):
            if getattr(self, name) < 0:
                raise ConfigError(var(name), "must not be negative")
        if self.fsync not in ("never", "interval", "always"):
            raise ConfigError(
                var("fsync"), f"must be never, interval or always, got {self.fsync!r}"
            )
        if self.fsync_interval <= 0:
            raise ConfigError(var("fsync_interval"), "must be greater than 0")
        if self.body_timeout <= 0:
            raise ConfigError(var("body_timeout"), "must be greater than 0")
        for event, rate in self.sample.items():
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(
                    var("sample"), f"rate for {event!r} must be in 0..1, got {rate}"
                )


ENV_PREFIX = "METRICS_"


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


def _fsync(raw: str) -> str:
    return raw.strip().lower()


def _sample(raw: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for part in _names(raw):
        event, sep, rate = part.partition("=")
        if not sep or not event.strip():
            raise ConfigError("", f"expected event=rate pairs, got {part!r}")
        rates[event.strip()] = _float(rate)
    return rates


_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": str.strip,
    "port": _int,
    "ring_capacity": _int,
    "jsonl": Path,
    "max_batch": _int,
    "max_body_bytes": _int,
    "max_event_bytes": _int,
    "cors_origins": _names,
    "dedupe_window": _int,
    "allowed_events": _optional_names,
    "taxonomy": _optional_path,
    "sample": _sample,
    "redact_keys": _lower_names,
    "fsync": _fsync,
    "fsync_interval": _float,
    "replay": _bool,
    "rotate_bytes": _int,
    "rotate_keep": _int,
    "ingest_token": _optional_str,
    "read_token": _optional_str,
    "body_timeout": _float,
}
