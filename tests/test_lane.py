"""The SDK formats' lane (ingest/formats/lane.py), through the app."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from starlette.testclient import TestClient

from metrics_service.ingest.formats.lane import SDK_KEY
from metrics_service.store.line import Group
from metrics_service.store.writer import Outcome

EVENTS = 20
BODIES: dict[str, dict[str, Any]] = {
    "/segment/v1/batch": {
        "writeKey": "wk",
        "batch": [
            {
                "type": "track",
                "event": "page_view",
                "anonymousId": "visitor-1",
                "messageId": f"lane-segment-{i}",
                "properties": {"plan": "pro"},
            }
            for i in range(EVENTS)
        ],
    },
    "/posthog/batch/": {
        "api_key": "phc",
        "batch": [
            {
                "event": "page_view",
                "distinct_id": "visitor-1",
                "uuid": f"lane-posthog-{i}",
                "properties": {"plan": "pro"},
            }
            for i in range(EVENTS)
        ],
    },
    "/ga4/mp/collect?measurement_id=G-LANE": {
        "client_id": "1234567890.1764763200",
        "events": [
            {"name": "page_view", "params": {"plan": "pro"}} for i in range(EVENTS)
        ],
    },
}


def mapped_alive() -> int:
    """How many mapped events' metadata (dicts holding `$sdk`) are alive."""
    return sum(1 for obj in gc.get_objects() if type(obj) is dict and SDK_KEY in obj)


@pytest.mark.parametrize("path", BODIES)
def test_a_request_waiting_for_the_writer_holds_none_of_its_mapped_events(
    client: TestClient, path: str
) -> None:
    # While a request waits for the group commit, dozens of others are decoded: what
    # it still held then would be cold in the cache when freed, and walked by every
    # collection in between.
    writer = client.app.service.writer  # type: ignore[attr-defined]
    enqueue = writer.enqueue
    alive: list[int] = []

    async def watched(group: Group) -> Outcome:
        alive.append(mapped_alive())
        return await enqueue(group)

    writer.enqueue = watched
    before = mapped_alive()
    r = client.post(path, json=BODIES[path])
    assert r.status_code in (200, 204), r.text
    assert alive == [before]
    body = client.get("/api/metrics/behavior?limit=100").json()
    assert body["total"] == EVENTS
