from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from metrics_service.ingest.contract import BehaviorEvent
from metrics_service.settings import Config, ConfigError

REDACTED = "[redacted]"
TAXONOMY_VAR = "METRICS_TAXONOMY"
# orjson refuses to write deeper objects, so the stored line can never hold them;
# stopping here keeps redaction clear of Python's recursion limit.
MAX_DEPTH = 256
_SPEC_KEYS = {"required", "description", "schema"}
# Problems reported per event from its schema: a 422 stays readable, and bounded.
MAX_SCHEMA_ERRORS = 20


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
    validators: Mapping[str, Draft202012Validator] = dataclasses.field(
        default_factory=dict
    )
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
                name: Draft202012Validator(schema)
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
        validator = self.validators.get(event.event)
        if validator is not None:
            found += schema_problems(validator, event.metadata, event.event)
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


def schema_problems(
    validator: Draft202012Validator, metadata: Any, event: str
) -> list[dict[str, Any]]:
    """`{"loc", "msg", "type": "schema", "path", "rule"}` per schema error, at most
    MAX_SCHEMA_ERRORS, in the order of their place in the metadata."""
    errors = sorted(
        validator.iter_errors(metadata), key=lambda e: [str(p) for p in e.path]
    )
    out = []
    for error in errors[:MAX_SCHEMA_ERRORS]:
        loc: list[str | int] = ["metadata", *error.absolute_path]
        if error.validator == "required":
            missing = _missing_key(error)
            if missing is not None:
                loc.append(missing)
        where = json_path(loc)
        out.append(
            {
                "loc": loc,
                "msg": f"{where}: {_message(error, event)}",
                "type": "schema",
                "path": where,
                "rule": str(error.validator),
            }
        )
    return out


def json_path(loc: list[str | int]) -> str:
    """`metadata.items[0].sku` for ["metadata", "items", 0, "sku"]."""
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _missing_key(error: ValidationError) -> str | None:
    keys = error.validator_value if isinstance(error.validator_value, list) else []
    instance = error.instance if isinstance(error.instance, dict) else {}
    for key in keys:
        missing = isinstance(key, str) and key not in instance
        if missing and error.message.startswith(repr(key)):
            return str(key)
    return None


def _json(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


def _message(error: ValidationError, event: str) -> str:
    """jsonschema's message, with values written as JSON (never Python's repr)."""
    rule, expected, value = error.validator, error.validator_value, error.instance
    if rule == "required":
        return f"missing, required by the schema of {event!r}"
    if rule == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        return f"expected {wanted}, got {_JSON_TYPES.get(type(value), 'a value')}"
    if rule == "enum":
        return f"must be one of {_json(expected)}, got {_json(value)}"
    if rule == "const":
        return f"must be {_json(expected)}, got {_json(value)}"
    bounds = {
        "minimum": "at least",
        "maximum": "at most",
        "exclusiveMinimum": "greater than",
        "exclusiveMaximum": "less than",
    }
    if rule in bounds:
        return f"must be {bounds[str(rule)]} {_json(expected)}, got {_json(value)}"
    return error.message


def _check_schema(schema: Any, where: str) -> str | None:
    """Why `schema` cannot be used, naming the place in it; None when it can."""
    if not isinstance(schema, dict | bool):
        return f"{where}: expected a JSON Schema object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        inside = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path
        )
        return f"{where}{inside}: {exc.message}"
    remote = _remote_ref(schema, where, 0)
    if remote is not None:
        return f"{remote}: only local references ('#/...') are supported"
    return None


def _remote_ref(value: Any, where: str, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return f"{where}.$ref"
        for key, item in value.items():
            found = _remote_ref(item, f"{where}.{key}", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _remote_ref(item, f"{where}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


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
            problem = _check_schema(spec["schema"], f"{where}.schema")
            if problem is not None:
                raise broken(problem)
            schemas[name] = spec["schema"]
    return Taxonomy(required, schemas)
