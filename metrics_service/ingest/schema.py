"""A taxonomy event's JSON Schema (draft 2020-12) for its metadata: checked at load,
compiled once, and its errors as the 422's items.

`jsonschema` decides and words every refusal. An event that passes is accepted by a
checker compiled from the schema when it only uses the common keywords (`accepts`):
it answers as jsonschema does, in a fraction of the time; any other keyword sends
the whole schema to jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sized
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

# Problems reported per event: a 422 stays readable, and bounded.
MAX_ERRORS = 20
MAX_DEPTH = 256

Check = Callable[[Any], bool]


class MetadataSchema:
    """One event's schema, compiled once (at start-up)."""

    def __init__(self, schema: dict[str, Any] | bool) -> None:
        self.validator = Draft202012Validator(schema)
        self.fast = compile_check(schema)

    def accepts(self, metadata: Any) -> bool:
        fast = self.fast
        if fast is not None:
            return fast(metadata)
        return bool(self.validator.is_valid(metadata))

    def problems(self, metadata: Any, event: str) -> list[dict[str, Any]]:
        return problems(self.validator, metadata, event)


# -- the compiled checker: a subset of draft 2020-12 --------------------------------

# Keywords that assert nothing (annotations): ignored, as jsonschema ignores them.
# `format` is an annotation too unless a format checker is asked for (none is).
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "number": lambda v: type(v) is int or type(v) is float,
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


class _Unsupported(Exception):
    """A keyword the compiled checker does not know: jsonschema decides instead."""


def compile_check(schema: Any) -> Check | None:
    """A function answering jsonschema's is_valid for `schema`, or None when the
    schema uses a keyword outside the compiled subset."""
    try:
        return _compile(schema, 0)
    except _Unsupported:
        return None


def _compile(schema: Any, depth: int) -> Check:
    if depth > 32:
        raise _Unsupported
    if schema is True:
        return lambda value: True
    if schema is False:
        return lambda value: False
    if not isinstance(schema, dict):
        raise _Unsupported
    checks: list[Check] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        make = _KEYWORDS.get(key)
        if make is None:
            raise _Unsupported
        checks.append(make(rule, schema, depth))
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    checks_ = tuple(checks)

    def every(value: Any) -> bool:
        for check in checks_:  # noqa: SIM110 (a loop: no generator per call)
            if not check(value):
                return False
        return True

    return every


def _type(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    names = rule if isinstance(rule, list) else [rule]
    tests = [_TYPES[name] for name in names]
    if len(tests) == 1:
        return tests[0]
    return lambda value: any(test(value) for test in tests)


def _enum(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    options = list(rule)
    if all(isinstance(option, str) for option in options):
        names = frozenset(options)
        return lambda value: isinstance(value, str) and value in names
    return lambda value: any(equal(value, option) for option in options)


def _const(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    return lambda value: equal(value, rule)


def _number(test: Callable[[float, float], bool]) -> Callable[..., Check]:
    def make(rule: Any, schema: dict[str, Any], depth: int) -> Check:
        def check(value: Any) -> bool:
            kind = type(value)
            return (kind is not int and kind is not float) or test(value, rule)

        return check

    return make


def _length(
    test: Callable[[int, int], bool], kind: type[Sized]
) -> Callable[..., Check]:
    def make(rule: Any, schema: dict[str, Any], depth: int) -> Check:
        def check(value: Any) -> bool:
            return not isinstance(value, kind) or test(len(value), rule)

        return check

    return make


def _pattern(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    compiled = re.compile(rule)
    return lambda value: not isinstance(value, str) or bool(compiled.search(value))


def _required(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    keys = list(rule)
    return lambda value: not isinstance(value, dict) or all(k in value for k in keys)


def _properties(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    children = {key: _compile(sub, depth + 1) for key, sub in rule.items()}

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for key, child in children.items():
            if key in value and not child(value[key]):
                return False
        return True

    return check


def _additional(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    if "patternProperties" in schema:
        raise _Unsupported
    known = set(schema.get("properties", {}))
    child = _compile(rule, depth + 1)

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        return all(child(item) for key, item in value.items() if key not in known)

    return check


def _items(rule: Any, schema: dict[str, Any], depth: int) -> Check:
    if "prefixItems" in schema:
        raise _Unsupported
    child = _compile(rule, depth + 1)
    return lambda value: not isinstance(value, list) or all(map(child, value))


_KEYWORDS: dict[str, Callable[[Any, dict[str, Any], int], Check]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _number(lambda v, b: v >= b),
    "maximum": _number(lambda v, b: v <= b),
    "exclusiveMinimum": _number(lambda v, b: v > b),
    "exclusiveMaximum": _number(lambda v, b: v < b),
    "minLength": _length(lambda n, b: n >= b, str),
    "maxLength": _length(lambda n, b: n <= b, str),
    "minItems": _length(lambda n, b: n >= b, list),
    "maxItems": _length(lambda n, b: n <= b, list),
    "minProperties": _length(lambda n, b: n >= b, dict),
    "maxProperties": _length(lambda n, b: n <= b, dict),
    "pattern": _pattern,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "items": _items,
}


def equal(a: Any, b: Any) -> bool:
    """JSON equality as jsonschema's enum and const use it: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


# -- refusals: jsonschema's errors as the 422's items ---------------------------------


def problems(
    validator: Draft202012Validator, metadata: Any, event: str
) -> list[dict[str, Any]]:
    """`{"loc", "msg", "type": "schema", "path", "rule"}` per schema error, at most
    MAX_ERRORS, in the order of their place in the metadata."""
    errors = sorted(
        validator.iter_errors(metadata), key=lambda e: [str(p) for p in e.path]
    )
    out = []
    for error in errors[:MAX_ERRORS]:
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


def check_schema(schema: Any, where: str) -> str | None:
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
