"""`GET /metrics`: the collector's counters in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector
from starlette.requests import Request
from starlette.responses import Response

from metrics_service.service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REASONS = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


class ServiceMetrics(PromCollector):
    """Reads the live counters of one Service at scrape time; nothing is kept twice."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        collector = service.writer
        # Refusals answered before the scrape, still waiting for their batch: recorded
        # and written now, so the quarantine's size and write errors count them.
        service.quarantine.settle()
        service.quarantine.flush()
        accepted = CounterMetricFamily(
            "metrics_events_accepted", "Events written to the sink and the ring."
        )
        accepted.add_metric([], collector.accepted)
        yield accepted
        rejected = CounterMetricFamily(
            "metrics_requests_rejected",
            "Requests answered with an error, by reason.",
            labels=["reason", "status"],
        )
        for status, count in sorted(service.rejected.items()):
            reason = REASONS.get(status, "other")
            rejected.add_metric([reason, str(status)], count)
        yield rejected
        for name, doc, value in (
            (
                "metrics_events_deduplicated",
                "Events dropped as repeats of an event_id.",
                collector.duplicates,
            ),
            (
                "metrics_events_sampled_out",
                "Events dropped by METRICS_SAMPLE.",
                service.sampled_out,
            ),
            (
                "metrics_sink_write_errors",
                "Sink writes that failed (answered 503).",
                collector.write_errors,
            ),
            (
                "metrics_sink_fsync_seconds",
                "Time spent in fsync.",
                collector.fsync_seconds,
            ),
            (
                "metrics_quarantine_write_errors",
                "Refusals the quarantine could not append to its file (kept in"
                " memory).",
                service.quarantine.write_errors,
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter
        for name, doc, gauge_value in (
            ("metrics_ring_size", "Events now in the ring.", len(service.ring)),
            (
                "metrics_ring_capacity",
                "Events the ring holds at most.",
                service.ring.capacity,
            ),
            ("metrics_sink_bytes", "Size of the active sink file.", service.sink.size),
            ("metrics_last_seq", "Highest seq assigned.", collector.last_seq),
            (
                "metrics_quarantine_size",
                "Refused ingest requests now in the quarantine.",
                len(service.quarantine.records),
            ),
            (
                "metrics_sink_healthy",
                "1 when the last write succeeded, else 0.",
                int(collector.error is None),
            ),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], gauge_value)
            yield gauge


def registry_for(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceMetrics(service))
    return registry


async def metrics(request: Request) -> Response:
    state = request.app.state
    # One registry per app, so several apps in one process never share counters.
    registry: CollectorRegistry | None = getattr(state, "metrics_registry", None)
    if registry is None:
        registry = state.metrics_registry = registry_for(state.service)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
