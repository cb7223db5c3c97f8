"""The PyPI server libraries `segment-analytics-python` and `posthog`, pointed at a
real collector: their batches arrive, mapped. One server for the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import posthog
import pytest
from segment.analytics.client import Client as SegmentClient

from metrics_service.testing import MetricsServer

TOKEN = "sdk-clients-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    folder: Path = tmp_path_factory.mktemp("sdk-clients")
    # With the ingest token set, the libraries' own keys are what lets them in.
    env = {"METRICS_INGEST_TOKEN": TOKEN}
    with MetricsServer(folder / "m.jsonl", env=env) as running:
        yield running


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_analytics_python_batches_arrive(
    server: MetricsServer, gzip: bool
) -> None:
    errors: list[Exception] = []
    client = SegmentClient(
        TOKEN,
        host=f"{server.url}/segment",
        gzip=gzip,
        max_retries=0,
        upload_interval=0.05,
        on_error=lambda error, batch: errors.append(error),
    )
    user = f"segment-user-{gzip}"
    try:
        for i in range(30):
            client.track(user, "Order Completed", {"order": i, "plan": "pro"})
        client.identify(user, {"email": "ada@example.com"})
        client.page(user, "Docs", "Pricing", {"url": "http://example.com/pricing"})
        client.flush()
    finally:
        client.shutdown()
    assert errors == []
    orders = server.client.wait_for("Order Completed", count=30, visitor_id=user)
    assert sorted(e["metadata"]["order"] for e in orders) == list(range(30))
    first = orders[0]
    assert first["event_id"]  # the messageId
    assert first["user_agent"].startswith("analytics-python/")
    sdk = first["metadata"]["$sdk"]
    assert sdk["format"] == "segment"
    assert sdk["type"] == "track"
    assert sdk["user_id"] == user
    assert sdk["library"] == "analytics-python"
    (identify,) = server.client.wait_for("identify", visitor_id=user)
    assert identify["metadata"]["email"] == "ada@example.com"
    (page,) = server.client.wait_for("page", visitor_id=user)
    assert page["metadata"]["$sdk"]["name"] == "Pricing"


def refused_401(server: MetricsServer) -> float:
    """How many requests the collector answered 401 so far (GET /metrics)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if (
            line.startswith("metrics_requests_rejected_total{")
            and 'status="401"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_segment_refusal_is_not_retried(server: MetricsServer) -> None:
    before = refused_401(server)
    errors: list[Exception] = []
    client = SegmentClient(
        "not-the-token",
        host=f"{server.url}/segment",
        max_retries=3,
        upload_interval=0.05,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        client.track("segment-refused", "Nope")
        client.flush()
    finally:
        client.shutdown()
    (error,) = errors
    assert getattr(error, "status", None) == 401
    assert refused_401(server) == before + 1  # once, though 3 retries were allowed


def test_posthog_python_batches_arrive(server: MetricsServer) -> None:
    client = posthog.Posthog(
        TOKEN,
        host=f"{server.url}/posthog",
        max_retries=0,
        flush_interval=0.05,
        disable_geoip=True,
    )
    try:
        for i in range(30):
            client.capture("signed_up", distinct_id="posthog-user", properties={"i": i})
        client.set(distinct_id="posthog-user", properties={"plan": "pro"})
        client.flush()
    finally:
        client.shutdown()
    events = server.client.wait_for("signed_up", count=30, visitor_id="posthog-user")
    assert sorted(e["metadata"]["i"] for e in events) == list(range(30))
    first = events[0]
    assert first["event_id"]  # the uuid
    assert first["metadata"]["$sdk"]["format"] == "posthog"
    assert first["metadata"]["$sdk"]["library"] == "posthog-python"
    assert "token" not in first["metadata"]
    (identify,) = server.client.wait_for("$set", visitor_id="posthog-user")
    assert identify["metadata"]["$set"] == {"plan": "pro"}
    assert identify["metadata"]["$sdk"]["type"] == "identify"
