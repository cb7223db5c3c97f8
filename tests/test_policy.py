from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event, read_lines
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.cli import main
from metrics_service.ingest.contract import BehaviorEvent
from metrics_service.ingest.policy import REDACTED, Policy, sample_point
from metrics_service.ingest.schema import MetadataSchema, compile_check
from metrics_service.settings import ConfigError

BATCH_URL = "/api/metrics/events"
TAXONOMY = {
    "events": {
        "checkout_completed": {"required": ["plan", "amount"]},
        "page_view": {"description": "any page"},
        "signup": {},
    }
}


def taxonomy_file(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "taxonomy.json"
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    return path


def model(name: str = "page_view", **fields: Any) -> BehaviorEvent:
    return BehaviorEvent.model_validate(event(name, **fields))


# --- allowlist ---------------------------------------------------------------


def test_no_allowlist_accepts_any_event() -> None:
    assert Policy().problems(model("anything")) == []


def test_allowlist_lists_the_allowed_names(config: Config) -> None:
    cfg = Config.from_env({"METRICS_ALLOWED_EVENTS": "signup, page_view,"})
    assert cfg.allowed_events == {"signup", "page_view"}
    cfg = dataclasses.replace(config, allowed_events=cfg.allowed_events)
    with TestClient(create_app(cfg)) as c:
        assert c.post(EVENT_URL, json=event("page_view")).status_code == 202
        r = c.post(EVENT_URL, json=event("Page_View"))
    assert r.status_code == 422
    [item] = r.json()["detail"]
    assert item["loc"] == ["event"]
    assert item["msg"] == "unknown event 'Page_View'; allowed: page_view, signup"
    assert len(read_lines(cfg.jsonl)) == 1


# --- taxonomy ----------------------------------------------------------------


def test_taxonomy_is_the_allowlist_and_requires_keys(
    tmp_path: Path, config: Config
) -> None:
    cfg = dataclasses.replace(config, taxonomy=taxonomy_file(tmp_path, TAXONOMY))
    with TestClient(create_app(cfg)) as c:
        ok = c.post(
            EVENT_URL,
            json=event("checkout_completed", metadata={"plan": "pro", "amount": 9}),
        )
        assert ok.status_code == 202
        unknown = c.post(EVENT_URL, json=event("refund"))
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["msg"] == (
            "unknown event 'refund'; allowed: checkout_completed, page_view, signup"
        )
        missing = c.post(BATCH_URL, json=[event("checkout_completed"), event()])
        assert missing.status_code == 422
        assert missing.json()["detail"] == [
            {
                "index": 0,
                "loc": ["metadata", "plan"],
                "msg": "missing metadata key 'plan', required for 'checkout_completed'",
                "type": "missing_required_metadata",
            },
            {
                "index": 0,
                "loc": ["metadata", "amount"],
                "msg": "missing metadata key 'amount', required for "
                "'checkout_completed'",
                "type": "missing_required_metadata",
            },
        ]
    assert [line["event"] for line in read_lines(cfg.jsonl)] == ["checkout_completed"]


def test_taxonomy_and_allowlist_both_apply(tmp_path: Path) -> None:
    cfg = Config(
        taxonomy=taxonomy_file(tmp_path, TAXONOMY),
        allowed_events=frozenset({"signup", "not_in_taxonomy"}),
    )
    assert Policy.from_config(cfg).allowed == {"signup"}


def test_taxonomy_from_env(tmp_path: Path) -> None:
    path = taxonomy_file(tmp_path, TAXONOMY)
    cfg = Config.from_env({"METRICS_TAXONOMY": str(path)})
    policy = Policy.from_config(cfg)
    assert policy.required["checkout_completed"] == ("plan", "amount")
    assert policy.required["signup"] == ()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "not valid JSON"),
        ([], 'expected {"events"'),
        ({"event": {}}, 'expected {"events"'),
        ({"events": {"a": {}}, "version": 2}, "unknown top-level key 'version'"),
        ({"events": {"a": []}}, "events.a: expected an object"),
        ({"events": {"a": {"requried": ["x"]}}}, "events.a: unknown key 'requried'"),
        ({"events": {"a": {"required": "plan"}}}, "events.a.required: expected a list"),
        ({"events": {"a": {"required": [""]}}}, "events.a.required"),
        ({"events": {" a": {}}}, "events. a: event names"),
    ],
)
def test_broken_taxonomy_is_a_config_error(
    tmp_path: Path, content: Any, words: str
) -> None:
    path = taxonomy_file(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        Policy.from_config(Config(taxonomy=path))
    assert caught.value.name == "METRICS_TAXONOMY"
    assert str(path) in caught.value.message
    assert words in caught.value.message


def test_missing_taxonomy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Policy.from_config(Config(taxonomy=tmp_path / "nope.json"))
    assert caught.value.name == "METRICS_TAXONOMY"
    assert "cannot read the taxonomy file" in caught.value.message


def test_broken_taxonomy_stops_the_app(tmp_path: Path, config: Config) -> None:
    cfg = dataclasses.replace(config, taxonomy=taxonomy_file(tmp_path, b"{"))
    with pytest.raises(ConfigError):
        create_app(cfg)


def test_broken_taxonomy_stops_the_cli_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = taxonomy_file(tmp_path, {"events": []})
    monkeypatch.setenv("METRICS_TAXONOMY", str(path))
    code = main(["serve", "--jsonl", str(tmp_path / "m.jsonl"), "--port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("metrics-service: error: METRICS_TAXONOMY: ")
    assert "Traceback" not in err


# --- typed tracking plans: a JSON Schema per event ---------------------------------

TYPED = {
    "events": {
        "checkout_completed": {
            "required": ["currency"],
            "schema": {
                "type": "object",
                "required": ["plan", "amount"],
                "properties": {
                    "plan": {"enum": ["free", "pro"]},
                    "amount": {"type": "number", "minimum": 0},
                    "items": {
                        "type": "array",
                        "items": {"$ref": "#/$defs/item"},
                    },
                },
                "$defs": {"item": {"properties": {"sku": {"type": "string"}}}},
            },
        },
        "page_view": {},
    }
}


def test_schema_errors_are_per_index_with_path_and_rule(tmp_path: Path) -> None:
    cfg = Config(jsonl=tmp_path / "m.jsonl", taxonomy=taxonomy_file(tmp_path, TYPED))
    good = {"plan": "pro", "amount": 12.5, "currency": "EUR"}
    bad = {"plan": "team", "amount": -1, "items": [{"sku": 7}], "currency": "EUR"}
    with TestClient(create_app(cfg)) as c:
        r = c.post(
            BATCH_URL,
            json=[
                event("checkout_completed", metadata=good),
                event("checkout_completed", metadata=bad),
                event("checkout_completed", metadata={"amount": True}),
                event("page_view"),
            ],
        )
        assert r.status_code == 422
        detail = r.json()["detail"]
        [record] = c.get("/api/metrics/behavior/rejected").json()["rejections"]
    assert record["detail"] == detail
    assert [(d["index"], d["loc"], d.get("rule")) for d in detail] == [
        (1, ["metadata", "amount"], "minimum"),
        (1, ["metadata", "items", 0, "sku"], "type"),
        (1, ["metadata", "plan"], "enum"),
        (2, ["metadata", "currency"], None),
        (2, ["metadata", "plan"], "required"),
        (2, ["metadata", "amount"], "type"),
    ]
    assert detail[0] == {
        "index": 1,
        "loc": ["metadata", "amount"],
        "msg": "metadata.amount: must be at least 0, got -1",
        "type": "schema",
        "path": "metadata.amount",
        "rule": "minimum",
    }
    assert detail[1]["path"] == "metadata.items[0].sku"
    assert detail[1]["msg"] == "metadata.items[0].sku: expected string, got number"
    assert detail[2]["msg"] == (
        'metadata.plan: must be one of ["free","pro"], got "team"'
    )
    # The taxonomy's own `required` form still works beside the schema.
    assert detail[3]["type"] == "missing_required_metadata"
    assert detail[5]["msg"] == "metadata.amount: expected number, got boolean"
    assert read_lines(cfg.jsonl) == []


def test_a_valid_event_passes_its_schema(tmp_path: Path) -> None:
    cfg = Config(jsonl=tmp_path / "m.jsonl", taxonomy=taxonomy_file(tmp_path, TYPED))
    metadata = {"plan": "free", "amount": 0, "currency": "EUR", "items": [{"sku": "a"}]}
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, json=event("checkout_completed", metadata=metadata))
        assert r.status_code == 202
    assert read_lines(cfg.jsonl)[0]["metadata"] == metadata


def test_schemas_are_compiled_once_and_only_for_events_with_one(tmp_path: Path) -> None:
    policy = Policy.from_config(Config(taxonomy=taxonomy_file(tmp_path, TYPED)))
    assert set(policy.validators) == {"checkout_completed"}
    assert policy.problems(model("page_view", metadata={"anything": [1]})) == []
    assert Policy.from_config(Config(taxonomy=taxonomy_file(tmp_path, TAXONOMY))) == (
        Policy.from_config(Config(taxonomy=taxonomy_file(tmp_path, TAXONOMY)))
    )


def test_schema_errors_are_capped_per_event(tmp_path: Path) -> None:
    schema = {"type": "object", "additionalProperties": {"type": "string"}}
    content = {"events": {"e": {"schema": schema}}}
    policy = Policy.from_config(Config(taxonomy=taxonomy_file(tmp_path, content)))
    problems = policy.problems(model("e", metadata={f"k{i}": i for i in range(50)}))
    assert len(problems) == 20


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "nope"}, "events.a.schema.type: "),
        (
            {"properties": {"x": {"minimum": "0"}}},
            "events.a.schema.properties.x.minimum: '0' is not of type 'number'",
        ),
        ({"allOf": [{"type": 3}]}, "events.a.schema.allOf[0].type: "),
        (
            {"properties": {"x": {"$ref": "https://example.com/s.json"}}},
            "events.a.schema.properties.x.$ref: only local references",
        ),
        ([], "events.a.schema: expected a JSON Schema object"),
    ],
)
def test_a_broken_schema_stops_start_up_naming_event_and_path(
    tmp_path: Path, schema: Any, words: str
) -> None:
    path = taxonomy_file(tmp_path, {"events": {"a": {"schema": schema}}})
    with pytest.raises(ConfigError) as caught:
        Policy.from_config(Config(taxonomy=path))
    assert caught.value.name == "METRICS_TAXONOMY"
    assert words in caught.value.message
    assert "\n" not in caught.value.message


FAST_SCHEMAS: list[Any] = [
    SCHEMA_FAST := {
        "type": "object",
        "required": ["plan", "amount"],
        "properties": {
            "plan": {"enum": ["free", "pro", 1, True, None, [1], {"a": 1}]},
            "amount": {"type": "number", "minimum": 0, "exclusiveMaximum": 100},
            "n": {"type": "integer", "maximum": 5, "exclusiveMinimum": -5},
            "sku": {"type": ["string", "null"], "minLength": 1, "maxLength": 3},
            "items": {"type": "array", "maxItems": 2, "items": {"const": 1.0}},
        },
        "additionalProperties": {"type": ["boolean", "string"], "pattern": "^p"},
        "minProperties": 1,
        "maxProperties": 4,
    },
    {"properties": {"items": {"minItems": 1, "items": False}}},
    {"additionalProperties": False, "properties": {"plan": True}},
    {"type": "object", "title": "annotations only", "description": "x"},
    True,
    False,
]
KEYS = st.sampled_from(["plan", "amount", "n", "sku", "items", "p"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-10, 110)
    | st.floats(-10, 110, allow_nan=False)
    | st.sampled_from(["free", "pro", "", "abcd", "p1", "x", "1"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5)
    ),
    max_leaves=12,
)


CHECKERS = [(compile_check(s), Draft202012Validator(s), s) for s in FAST_SCHEMAS]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=5) | VALUES)
def test_the_compiled_check_agrees_with_jsonschema(value: Any) -> None:
    for fast, validator, schema in CHECKERS:
        assert fast is not None
        assert fast(value) == validator.is_valid(value), schema


def test_other_keywords_leave_it_to_jsonschema() -> None:
    for schema in (
        {"properties": {"x": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"anyOf": [{"type": "string"}]},
        {"patternProperties": {"^a": {}}, "additionalProperties": False},
        {"prefixItems": [{}], "items": False},
    ):
        assert compile_check(schema) is None
    assert MetadataSchema(TYPED["events"]["checkout_completed"]["schema"]).fast is None
    assert MetadataSchema(SCHEMA_FAST).fast is not None


def test_schema_errors_on_the_compiled_path(tmp_path: Path) -> None:
    content = {"events": {"e": {"schema": SCHEMA_FAST}}}
    policy = Policy.from_config(Config(taxonomy=taxonomy_file(tmp_path, content)))
    assert policy.problems(model("e", metadata={"plan": "pro", "amount": 1})) == []
    found = policy.problems(model("e", metadata={"plan": "team", "amount": 100}))
    assert [(p["path"], p["rule"]) for p in found] == [
        ("metadata.amount", "exclusiveMaximum"),
        ("metadata.plan", "enum"),
    ]


# --- sampling ----------------------------------------------------------------


@pytest.mark.parametrize(("rate", "kept"), [(0.0, 0), (1.0, 20)])
def test_sampled_event_at_rate_0_and_1(config: Config, rate: float, kept: int) -> None:
    cfg = dataclasses.replace(config, sample={"scroll": rate})
    batch = [event("scroll", visitor_id=f"visitor-{i}") for i in range(20)]
    with TestClient(create_app(cfg)) as c:
        r = c.post(BATCH_URL, json=[*batch, event("click")])
        assert r.status_code == 202
        assert (r.json()["stored"], r.json()["sampled_out"]) == (kept + 1, 20 - kept)
        counts = {
            b["event"]: b["count"] for b in c.get(SNAPSHOT_URL).json()["by_event"]
        }
    assert counts.get("scroll", 0) == kept
    assert counts["click"] == 1
    assert len(read_lines(cfg.jsonl)) == kept + 1


def test_sampling_is_by_visitor() -> None:
    policy = Policy(sample={"scroll": 0.5})
    visitors = [f"visitor-{i}" for i in range(200)]
    first = [policy.keep(model("scroll", visitor_id=v)) for v in visitors]
    again = [
        policy.keep(model("scroll", visitor_id=v, metadata={"y": 1})) for v in visitors
    ]
    assert first == again
    assert True in first
    assert False in first
    # Events without a rate are always kept.
    assert all(policy.keep(model("click", visitor_id=v)) for v in visitors)


def test_sampling_keeps_about_the_rate() -> None:
    policy = Policy(sample={"message_sent": 0.1})
    kept = sum(
        policy.keep(model("message_sent", visitor_id=f"visitor-{i}"))
        for i in range(10_000)
    )
    assert 700 < kept < 1300


def test_sample_parsed_from_env() -> None:
    cfg = Config.from_env({"METRICS_SAMPLE": "message_sent=0.1,scroll=0.01"})
    assert Policy.from_config(cfg).sample == {"message_sent": 0.1, "scroll": 0.01}


def test_sampling_is_stable_across_processes() -> None:
    """Not Python's hash(): another interpreter with another hash seed agrees."""
    code = (
        "from metrics_service.ingest.policy import sample_point;"
        "print(repr(sample_point('visitor-42', 'scroll')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert float(out) == sample_point("visitor-42", "scroll")
    assert 0.0 <= sample_point("visitor-42", "scroll") < 1.0
    assert sample_point("visitor-42", "scroll") != sample_point("visitor-43", "scroll")


# --- redaction ---------------------------------------------------------------


def test_redaction_of_a_nested_email_key(config: Config) -> None:
    cfg = dataclasses.replace(config, redact_keys=frozenset({"email", "token"}))
    metadata = {
        "form": {"fields": [{"Email": "a@b.example", "name": "Ann"}]},
        "EMAIL": "x@y.example",
        "TOKEN": {"nested": "secret"},
        "plan": "pro",
    }
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, json=event(metadata=metadata))
        assert r.status_code == 202
        snap = c.get(SNAPSHOT_URL)
    expected = {
        "form": {"fields": [{"Email": REDACTED, "name": "Ann"}]},
        "EMAIL": REDACTED,
        "TOKEN": REDACTED,
        "plan": "pro",
    }
    [line] = read_lines(cfg.jsonl)
    assert line["metadata"] == expected
    assert snap.json()["last_events"][0]["metadata"] == expected
    assert b"@" not in cfg.jsonl.read_bytes()


def test_redaction_in_a_batch_and_from_env(config: Config) -> None:
    keys = Config.from_env({"METRICS_REDACT_KEYS": "Email, Phone"}).redact_keys
    assert keys == {"email", "phone"}
    cfg = dataclasses.replace(config, redact_keys=keys)
    with TestClient(create_app(cfg)) as c:
        r = c.post(
            BATCH_URL,
            json=[
                event(metadata={"user": {"phone": "555"}}),
                event(metadata={"email": "a@b"}),
            ],
        )
    assert r.status_code == 202
    assert [line["metadata"] for line in read_lines(cfg.jsonl)] == [
        {"user": {"phone": REDACTED}},
        {"email": REDACTED},
    ]


def test_redaction_keeps_required_keys_present(tmp_path: Path, config: Config) -> None:
    path = taxonomy_file(tmp_path, {"events": {"signup": {"required": ["email"]}}})
    cfg = dataclasses.replace(config, taxonomy=path, redact_keys=frozenset({"email"}))
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, json=event("signup", metadata={"email": "a@b"}))
    assert r.status_code == 202
    assert read_lines(cfg.jsonl)[0]["metadata"] == {"email": REDACTED}


def test_no_redact_keys_leaves_the_event_alone() -> None:
    original = model(metadata={"email": "a@b"})
    assert Policy().redact(original) is original


def test_taxonomy_is_read_once_at_start_up(tmp_path: Path, config: Config) -> None:
    path = taxonomy_file(tmp_path, TAXONOMY)
    cfg = dataclasses.replace(config, taxonomy=path)
    with TestClient(create_app(cfg)) as c:
        path.write_bytes(b"broken now")
        assert c.post(EVENT_URL, json=event("signup")).status_code == 202
        assert c.post(EVENT_URL, json=event("other")).status_code == 422
