"""The live dashboard (`GET /`) and the browser tracker (`GET /tracker.js`).

Both are plain files shipped in the package's `static/` folder: no build step, no CDN.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.errors import ApiError

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# The dashboard's own assets, served under /static/; nothing else in the folder is.
ASSETS = frozenset(
    {
        "dashboard.css",
        "dashboard.js",
        "ui.js",
        "api.js",
        "events.js",
        "rejected.js",
        "timeline.js",
        "trail.js",
        "live.js",
    }
)

# Event text is rendered as text anyway; this is the second line of defence. Only the
# package's own files run (no inline script, so injected markup cannot run either), and
# Trusted Types with no policy makes every HTML sink (innerHTML, document.write, a string
# to setTimeout) throw. 'trusted-types-eval' lets eval() run where Trusted Types are
# enforced, and nowhere else: the page never calls it, but a test driver does
# (Playwright's wait_for_function with a string expression).
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self' 'trusted-types-eval'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
)


class Asset(NamedTuple):
    body: bytes
    media_type: str
    etag: str


@functools.cache
def load(name: str) -> Asset:
    body = resources.files("metrics_service").joinpath("static", name).read_bytes()
    suffix = name[name.rfind(".") :]
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, TYPES[suffix], etag)


def serve(request: Request, name: str, headers: dict[str, str]) -> Response:
    asset = load(name)
    headers = {
        "ETag": asset.etag,
        # Revalidate every time: a new release must never leave an old script running.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        **headers,
    }
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def dashboard(request: Request) -> Response:
    return serve(
        request,
        "dashboard.html",
        {"Content-Security-Policy": DASHBOARD_CSP, "Referrer-Policy": "no-referrer"},
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise ApiError(404, f"no such asset {name!r}")
    return serve(request, name, {})


async def tracker(request: Request) -> Response:
    # Loaded by <script src> from the sites being measured, so from any origin.
    return serve(
        request,
        "tracker.js",
        {
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Access-Control-Allow-Origin": "*",
        },
    )
