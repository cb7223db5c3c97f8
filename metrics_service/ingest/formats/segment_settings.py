"""The settings document analytics.js loads from its cdnURL before it sends anything
(GET /segment/v1/projects/{writeKey}/settings): Segment.io pointed back at this service."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request


def settings_document(request: Request, prefix: str) -> dict[str, Any]:
    """Segment.io pointing back at `prefix` (Segment's API path) here. analytics-next
    takes the body's writeKey and its Basic auth user from `apiKey`, not load()."""
    write_key = request.path_params["writeKey"]
    host = request.headers.get("host") or "127.0.0.1"
    root = request.scope.get("root_path", "")
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}{root}{prefix}",
                "protocol": request.url.scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        # No client metrics: they would go to Segment's own host.
        "metrics": {"sampleRate": 0, "host": f"{host}{root}{prefix}"},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


class SegmentSettings(BaseModel):
    integrations: dict[str, Any]
