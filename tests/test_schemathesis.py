"""schemathesis against the app's own /openapi.json: no 5xx, every response as documented.

Bounded: a few dozen generated requests per operation, in-process (no server). The SSE
stream is left out (its response never ends; tests/test_stream.py covers it), and so
are the SDK paths that share another path's handler; wait's `timeout` is kept short so a generated `count` cannot make a case sit for a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from metrics_service import Config, create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Paths served by the same handler as another documented path (the SDKs' short and
# alternative paths): fuzzing one of each is enough, and keeps the run short.
SAME_HANDLER = r"^/segment/v1/[tpigasb]$|^/posthog/(i/v0/e|capture|decide)/$"
TOKENS = {"ingest_token": "schema-ingest-token", "read_token": "schema-read-token"}


def load(folder: str, **tokens: str) -> Any:
    app = create_app(
        Config(jsonl=Path(folder) / "m.jsonl", ring_capacity=1000, **tokens)
    )
    return (
        schemathesis.openapi.from_asgi("/openapi.json", app)
        .exclude(path="/api/metrics/behavior/stream")
        .exclude(path_regex=SAME_HANDLER)
    )


# Loaded at import (schemathesis parametrizes at collection); the folder goes at exit.
_FOLDER = tempfile.TemporaryDirectory(prefix="schemathesis-")
schema = load(_FOLDER.name + "/open")
schema_with_tokens = load(_FOLDER.name + "/tokens", **TOKENS)
BOUNDED = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def bounded(case: Any) -> None:
    if case.path.endswith("/wait"):
        case.query = {**(case.query or {}), "timeout": "0.05"}


@schema.parametrize()
@BOUNDED
def test_api_matches_its_openapi_document(case: Any) -> None:
    bounded(case)
    case.call_and_validate(checks=CHECKS)


# Three generated cases per operation, on top of schemathesis's coverage cases: a
# token-guarded route answers 401 before it reads a parameter, so more cases only
# repeat that answer; the SDK routes check their key on the parsed body, which the
# coverage cases vary.
@schema_with_tokens.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
def test_401s_match_the_document_too(case: Any) -> None:
    """With tokens set and none sent, the 401 answers are documented as well."""
    bounded(case)
    if case.headers:
        case.headers.pop("Authorization", None)
    if case.query:
        case.query.pop("token", None)
    case.call_and_validate(checks=CHECKS)
