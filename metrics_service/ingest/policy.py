from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from metrics_service.ingest.contract import BehaviorEvent
from metrics_service.ingest.schema import MetadataSchema, check_schema
from metrics_service.settings import Config, ConfigError

REDACTED = "[redacted]"
TAXONOMY_VAR = "METRICS_TAXONOMY"
# orjson refuses to write deeper objects, so the stored line can never hold them;
# stopping here keeps redaction clear of Python's recursion limit.
MAX_DEPTH = 256
_SPEC_KEYS = {"required", "description", "schema"}


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """A taxonomy file: required metadata keys, and JSON Schemas (draft 2020-12) for
    the metadata, by event name."""

    required: dict[str, tuple[str, ...]]
    schemas: dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the collector accepts, keeps and hides: allowlist, taxonomy, sampling, redaction."""

    allowed: frozenset[str] | None = None
    required: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Compiled once, at start-up (from_config).
    validators: Mapping[str, MetadataSchema] = dataclasses.field(default_factory=dict)
    sample: Mapping[str, float] = dataclasses.field(default_factory=dict)
    redact_keys: frozenset[str] = frozenset()
    # What is configured, so the ingest path skips the rest with one attribute read.
    checks: bool = dataclasses.field(init=False, repr=False, compare=False)
    samples: bool = dataclasses.field(init=False, repr=False, compare=False)
    redacts: bool = dataclasses.field(init=False, repr=False, compare=False)
    # None of the three: events need nothing from the policy (plain.py's fast path).
    plain: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            self.allowed is not None or bool(self.required) or bool(self.validators)
        )
        samples, redacts = bool(self.sample), bool(self.redact_keys)
        object.__setattr__(self, "checks", checks)
        object.__setattr__(self, "samples", samples)
        object.__setattr__(self, "redacts", redacts)
        object.__setattr__(self, "plain", not (checks or samples or redacts))

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        """Raises ConfigError naming METRICS_TAXONOMY when the taxonomy file is broken."""
        allowed = config.allowed_events
        taxonomy = Taxonomy({}, {})
        if config.taxonomy is not None:
            taxonomy = load_taxonomy(config.taxonomy)
            names = frozenset(taxonomy.required)
            allowed = names if allowed is None else allowed & names
        return cls(
            allowed=allowed,
            required=taxonomy.required,
            validators={
                name: MetadataSchema(schema)
                for name, schema in taxonomy.schemas.items()
            },
            sample=dict(config.sample),
            redact_keys=frozenset(key.lower() for key in config.redact_keys),
        )

    def problems(self, event: BehaviorEvent) -> list[dict[str, Any]]:
        """`{"loc", "msg"}` entries for an event the allowlist or taxonomy refuses."""
        if self.allowed is not None and event.event not in self.allowed:
            names = ", ".join(sorted(self.allowed)) or "(none)"
            return [
                {
                    "loc": ["event"],
                    "msg": f"unknown event {event.event!r}; allowed: {names}",
                    "type": "event_not_allowed",
                }
            ]
        found = [
            {
                "loc": ["metadata", key],
                "msg": f"missing metadata key {key!r}, required for {event.event!r}",
                "type": "missing_required_metadata",
            }
            for key in self.required.get(event.event, ())
            if key not in event.metadata
        ]
        schema = self.validators.get(event.event)
        if schema is not None and not schema.accepts(event.metadata):
            found += schema.problems(event.metadata, event.event)
        return found

    def keep(self, event: BehaviorEvent) -> bool:
        """Sampling: the same visitor and event always get the same answer."""
        rate = self.sample.get(event.event)
        if rate is None or rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        return sample_point(event.visitor_id, event.event) < rate

    def redact(self, event: BehaviorEvent) -> BehaviorEvent:
        if not self.redact_keys or not event.metadata:
            return event
        metadata = _redact(event.metadata, self.redact_keys, 0)
        return event.model_copy(update={"metadata": metadata})


def sample_point(visitor_id: str, event: str) -> float:
    """A number in [0, 1) fixed by (visitor, event), the same in every process."""
    digest = hashlib.blake2b(
        f"{event}\x00{visitor_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


def _redact(value: Any, keys: frozenset[str], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED
            if isinstance(k, str) and k.lower() in keys
            else _redact(v, keys, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, keys, depth + 1) for v in value]
    return value


def load_taxonomy(path: Path) -> Taxonomy:
    """`{"events": {name: {"required": [keys], "schema": {...}}}}` → a Taxonomy."""

    def broken(message: str) -> ConfigError:
        return ConfigError(TAXONOMY_VAR, f"{path}: {message}")

    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise broken(f"cannot read the taxonomy file: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise broken(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), dict):
        raise broken('expected {"events": {"<name>": {"required": ["<key>"]}}}')
    unknown = sorted(set(data) - {"events"})
    if unknown:
        raise broken(f"unknown top-level key {unknown[0]!r} (expected only 'events')")
    required: dict[str, tuple[str, ...]] = {}
    schemas: dict[str, dict[str, Any]] = {}
    for name, spec in data["events"].items():
        where = f"events.{name}"
        if not name.strip() or name != name.strip() or len(name) > 64:
            raise broken(f"{where}: event names are 1-64 characters, no outer spaces")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise broken(f'{where}: expected an object like {{"required": [...]}}')
        extra = sorted(set(spec) - _SPEC_KEYS)
        if extra:
            raise broken(
                f"{where}: unknown key {extra[0]!r} (expected required, schema,"
                " description)"
            )
        keys = spec.get("required", [])
        if not isinstance(keys, list) or not all(
            isinstance(k, str) and k for k in keys
        ):
            raise broken(f"{where}.required: expected a list of metadata key names")
        required[name] = tuple(keys)
        if "schema" in spec:
            problem = check_schema(spec["schema"], f"{where}.schema")
            if problem is not None:
                raise broken(problem)
            schemas[name] = spec["schema"]
    return Taxonomy(required, schemas)
