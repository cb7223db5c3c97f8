"""The real analytics SDKs' browser builds, fetched from the npm registry at test time,
and the demo site (e2e/sdk/*.html) that loads them from its own origin.

Each SDK is pinned to an exact version, fetched once with `npm pack` and kept under
`.cache/sdk/` (ignored by git; never committed). A failed fetch fails the test.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .conftest import QuietHandler, serving

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "sdk"
PAGES = Path(__file__).resolve().parent / "sdk"


@dataclass(frozen=True)
class Sdk:
    package: str
    version: str
    bundle: str  # the standalone browser build, inside the tarball's package/ folder

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def cached(self) -> Path:
        folder = self.package.lstrip("@").replace("/", "+")
        return CACHE / f"{folder}-{self.version}" / Path(self.bundle).name


SEGMENT = Sdk("@segment/analytics-next", "1.84.3", "dist/umd/index.js")
POSTHOG = Sdk("posthog-js", "1.449.2", "dist/array.full.js")
RUDDERSTACK = Sdk(
    "@rudderstack/analytics-js", "3.34.1", "dist/npm/modern/bundled/umd/index.js"
)
BY_NAME = {"segment": SEGMENT, "posthog": POSTHOG, "rudderstack": RUDDERSTACK}


class SdkFetchError(RuntimeError):
    pass


def bundle(sdk: Sdk) -> Path:
    """The SDK's browser build on disk, fetched with npm on first use."""
    if sdk.cached.is_file():
        return sdk.cached
    CACHE.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may ask at once: one fetches, the others wait for it.
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not sdk.cached.is_file():
            _fetch(sdk)
    return sdk.cached


def _fetch(sdk: Sdk) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SdkFetchError(
            f"npm not found: it fetches {sdk.spec} for the browser tests "
            "(install it: sudo apt-get install -y npm)"
        )
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        done = subprocess.run(
            [
                npm,
                "pack",
                sdk.spec,
                "--pack-destination",
                scratch,
                "--loglevel",
                "error",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=scratch,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise SdkFetchError(
                f"npm pack {sdk.spec} failed (exit {done.returncode}):\n"
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        with tarfile.open(tarballs[0]) as tar:
            member = tar.extractfile(f"package/{sdk.bundle}")
            if member is None:
                raise SdkFetchError(f"{sdk.spec} has no {sdk.bundle}")
            code = member.read()
        target = sdk.cached
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(scratch) / target.name
        partial.write_bytes(code)
        os.replace(partial, target)


class _SiteHandler(QuietHandler):
    files: dict[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        found = self.files.get(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(404)
            return
        self.send_page(*found)


@contextmanager
def demo_site(collector_url: str) -> Iterator[str]:
    """The demo pages (/segment.html, /posthog.html, /rudderstack.html, /next.html) and
    the SDKs (/sdk/<name>.js) on their own port, so another origin than the collector's;
    yields the site's URL."""
    files: dict[str, tuple[bytes, str]] = {}
    for name, sdk in BY_NAME.items():
        files[f"/sdk/{name}.js"] = (bundle(sdk).read_bytes(), "text/javascript")
    for page in PAGES.glob("*.html"):
        text = page.read_text().replace("__COLLECTOR__", json.dumps(collector_url))
        files[f"/{page.name}"] = (text.encode(), "text/html; charset=utf-8")
    handler = type("SiteHandler", (_SiteHandler,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server) as url:
        yield url
