"""POST /api/metrics/event and /events: a body in, its events stored, the answer out."""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from metrics_service.http.body import (
    ACCEPTED_TYPES,
    BATCH_TYPES,
    media_type,
    read_body,
    read_head,
)
from metrics_service.http.errors import ApiError
from metrics_service.ingest.clock import received_now
from metrics_service.ingest.decode import decode
from metrics_service.ingest.test_tag import test_id
from metrics_service.service import Service
from metrics_service.store.sink import SinkError
from metrics_service.store.writer import Outcome

# Where a lane leaves the body it read (after gzip) for whoever answers a refusal.
BODY_KEY = "metrics.body"
JSON_HEADERS = (b"content-type", b"application/json")
VARY_ORIGIN = (b"vary", b"Origin")
NOTHING = Outcome(0, 0, None, None)
# The answer of every single event: formatted, not built as a dict and dumped;
# "seq" is null when nothing was stored.
_EVENT_ANSWER = (
    b'{"ok":true,"stored":%d,"file":%s,"seq":%d,"duplicates":%d,"sampled_out":%d}'
)
_EVENT_NOT_STORED = (
    b'{"ok":true,"stored":%d,"file":%s,"seq":null,"duplicates":%d,"sampled_out":%d}'
)


class Ingest:
    """A bare ASGI app (no Request or Response objects); an ApiError raised here is
    answered by the front door (http/frontdoor.py)."""

    def __init__(self, *, batch: bool) -> None:
        self.batch = batch
        self.types = BATCH_TYPES if batch else ACCEPTED_TYPES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send, False)

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, vary: bool
    ) -> None:
        """`vary`: the request had no Origin, so the answer says it varies on one."""
        service: Service = scope["app"].service
        config = service.config
        head = read_head(scope["headers"])
        kind = media_type(head)
        if kind not in self.types:
            names = ", ".join(t for t in self.types if t) + " or none"
            raise ApiError(415, f"unsupported Content-Type {kind!r}; send {names}")
        body = await read_body(head, receive, config.max_body_bytes)
        scope[BODY_KEY] = body  # for the quarantine, should the front door refuse it
        tag = test_id(scope)
        group, sampled_out = decode(
            body,
            kind,
            batch=self.batch,
            policy=service.policy,
            max_batch=config.max_batch,
            max_event_bytes=config.max_event_bytes,
            received=received_now(),
            user_agent=head.user_agent,
            test_id=tag,
        )
        service.sampled_out += sampled_out
        outcome = NOTHING
        if group.bodies:
            try:
                outcome = await service.writer.enqueue(group)
            except SinkError as exc:
                raise ApiError(503, str(exc)) from None
        if self.batch:
            answer = orjson.dumps(
                {
                    "ok": True,
                    "stored": outcome.stored,
                    "duplicates": outcome.duplicates,
                    "sampled_out": sampled_out,
                    "file": str(config.jsonl),
                    "first_seq": outcome.first_seq,
                    "last_seq": outcome.last_seq,
                }
            )
        else:
            seq = outcome.first_seq
            if seq is None:
                answer = _EVENT_NOT_STORED % (
                    outcome.stored,
                    service.file_json,
                    outcome.duplicates,
                    sampled_out,
                )
            else:
                answer = _EVENT_ANSWER % (
                    outcome.stored,
                    service.file_json,
                    seq,
                    outcome.duplicates,
                    sampled_out,
                )
        headers = [(b"content-length", b"%d" % len(answer)), JSON_HEADERS]
        if vary:
            headers.append(VARY_ORIGIN)
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
