"""GET /openapi.json: the HTTP contract, from the route table (routes.py) and the pydantic
models (ingest/contract.py, http/schemas.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.responses import JSONResponse
from metrics_service.http.schemas import ErrorBody, EventBatch
from metrics_service.service import VERSION

Mode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
Refs = dict[tuple[Any, Mode], Any]  # (model, mode) -> {"$ref": ...}


Guard = Literal["ingest", "read", "open"]


class Doc(NamedTuple):
    summary: str
    responses: dict[int, tuple[str, type[BaseModel] | str | None]]
    params: tuple[dict[str, Any], ...] = ()
    body: type[BaseModel] | dict[str, Any] | None = None
    description: str = ""


class Endpoint(NamedTuple):
    """One row of the route table: which token guards it and how OpenAPI shows it."""

    method: str
    path: str
    handler: Any  # a Starlette endpoint function, or an ASGI app
    guard: Guard  # "ingest" / "read": the token that opens it when set; "open": none
    doc: Doc


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


FILTERS = (
    {
        **query(
            "event",
            {"type": "array", "items": {"type": "string"}},
            "Event name; repeat the parameter to match any of several.",
        ),
        "style": "form",
        "explode": True,
    },
    query("visitor_id", {"type": "string"}, "Exact visitor id."),
    query("event_id", {"type": "string"}, "Exact client event id."),
    query(
        "test_id",
        {"type": "string"},
        "Exact per-test tag the collector stamped (X-Metrics-Test-Id header,"
        " `test_id` query parameter or `metrics_test_id` cookie of the ingest"
        " request); also takes the operators.",
    ),
    query(
        "since",
        {"type": "string", "format": "date-time"},
        "ISO-8601; events whose `timestamp` is at or after it (naive means UTC).",
    ),
    query(
        "until",
        {"type": "string", "format": "date-time"},
        "ISO-8601; events whose `timestamp` is at or before it (naive means UTC).",
    ),
    query(
        "after",
        {"type": "integer"},
        "Only events with a greater seq: pass the `last_seq` read before a test.",
    ),
)
FILTER_NOTE = (
    "Filters combine with AND. `meta.<path>=<value>` (any number of them, dotted"
    " paths for nested objects) matches a metadata value by its string form:"
    ' `meta.step=2` matches 2 and "2", `meta.flag=true` matches true.'
    " Operators are suffixes on `meta.<path>`, `event`, `visitor_id` and `event_id`:"
    " `__gt`, `__gte`, `__lt`, `__lte` compare numbers (a JSON number, or a string"
    " holding one; anything else never matches), `__ne`, `__in` (comma-separated"
    " values), `__prefix`, `__contains` and `__eq` compare the string form,"
    " `__exists=true|false` asks whether the key is present (null is present)."
    " A missing key matches only `__ne` and `__exists=false`, so `meta.plan__ne=pro`"
    " is everything `meta.plan=pro` is not."
    " Unknown parameters and unknown operators are rejected with 422."
)
BODY_ERRORS: dict[int, tuple[str, type[BaseModel] | str | None]] = {
    400: ("Malformed JSON or invalid UTF-8", ErrorBody),
    403: ("An Origin outside METRICS_CORS_ORIGINS", ErrorBody),
    408: ("The body did not arrive in time", ErrorBody),
    413: ("The body is over the size limit", ErrorBody),
    415: ("Unsupported Content-Type, charset or Content-Encoding", ErrorBody),
    422: ("An invalid event, with loc/msg per problem", ErrorBody),
    503: ("The sink cannot be written; nothing was stored", ErrorBody),
}
BAD_QUERY = (422, ("An unknown or invalid query parameter", ErrorBody))
EVENT_STREAM = "text/event-stream"


def _schemas(docs: Iterable[Doc]) -> tuple[Refs, dict[str, Any]]:
    wanted: set[tuple[type[BaseModel], Mode]] = {(EventBatch, "validation")}
    for doc in docs:
        if isinstance(doc.body, type):
            wanted.add((doc.body, "validation"))
        for _, content in doc.responses.values():
            if isinstance(content, type):
                wanted.add((content, "serialization"))
    refs, defs = models_json_schema(
        sorted(wanted, key=lambda item: item[0].__name__), ref_template=REF
    )
    return dict(refs), defs.get("$defs", {})


def _operation(endpoint: Endpoint, refs: Refs) -> dict[str, Any]:
    doc, guard = endpoint.doc, endpoint.guard
    responses: dict[str, Any] = {}
    for status, (text, content) in sorted(doc.responses.items()):
        answer: dict[str, Any] = {"description": text}
        if isinstance(content, type):
            schema = refs[(content, "serialization")]
            answer["content"] = {"application/json": {"schema": schema}}
        elif content is not None:
            answer["content"] = {content: {"schema": {"type": "string"}}}
        responses[str(status)] = answer
    operation: dict[str, Any] = {"summary": doc.summary, "responses": responses}
    if doc.description:
        operation["description"] = doc.description
    if doc.params:
        operation["parameters"] = list(doc.params)
    if doc.body is not None:
        schema = (
            refs[(doc.body, "validation")] if isinstance(doc.body, type) else doc.body
        )
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    if guard != "open":
        token = "METRICS_INGEST_TOKEN" if guard == "ingest" else "METRICS_READ_TOKEN"
        responses["401"] = {
            "description": f"Missing or wrong token (only when {token} is set)",
            "content": {
                "application/json": {"schema": refs[(ErrorBody, "serialization")]}
            },
        }
        operation["security"] = [{}, {"bearer": []}, {"token": []}]
    return operation


def document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the route table."""
    endpoints = list(endpoints)
    refs, defs = _schemas(endpoint.doc for endpoint in endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(
            endpoint, refs
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "metrics_service",
            "version": VERSION,
            "description": "A small, fast behavior-analytics collector."
            ' Every error body is `{"detail": ...}`.',
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_document", None)
    if body is None:
        body = state.openapi_document = bytes(
            JSONResponse(document(request.app.endpoints)).body
        )
    return Response(body, media_type="application/json")
