"""Other analytics SDKs' wire formats (Segment, PostHog, GA4), mapped to BehaviorEvent.

ENDPOINTS is their part of the route table (app.ENDPOINTS includes it).
"""

from __future__ import annotations

from metrics_service.http.openapi import Endpoint
from metrics_service.ingest.formats import ga4, posthog, segment

ENDPOINTS: tuple[Endpoint, ...] = (
    *segment.ENDPOINTS,
    *posthog.ENDPOINTS,
    *ga4.ENDPOINTS,
)
