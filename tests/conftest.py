from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.app import App

EVENT_URL = "/api/metrics/event"
SNAPSHOT_URL = "/api/metrics/behavior"
HEALTH_URL = "/api/metrics/behavior/health"


def event(name: str = "page_view", **fields: Any) -> dict[str, Any]:
    """A valid event body; keyword arguments add or replace fields."""
    return {"visitor_id": "visitor-123", "event": name, **fields}


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed; fails on a line without its newline."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(jsonl=tmp_path / "m.jsonl")


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c


def run_app(
    config: Config, body: Callable[[App, httpx.AsyncClient], Coroutine[Any, Any, Any]]
) -> Any:
    """`body(app, client)` against a started app in-process, on a fresh event loop."""

    async def run() -> Any:
        app = create_app(config)
        app.service.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await body(app, c)
        finally:
            await app.service.stop()

    return asyncio.run(run())


@pytest.fixture(scope="session", autouse=True)
def _bytecode_of_temporary_folders(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """make test caches bytecode under PYTHONPYCACHEPREFIX: what the tests' temporary
    folders (venvs, README sections, pytester's projects) put there goes with the run
    rather than piling up a copy each run."""
    yield
    if sys.pycache_prefix is not None:
        basetemp = tmp_path_factory.getbasetemp().resolve()
        shutil.rmtree(
            Path(sys.pycache_prefix) / basetemp.relative_to(basetemp.anchor),
            ignore_errors=True,
        )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Under xdist's worksteal (make test), each worker first gets an even, contiguous
    share of the collection and runs it in order; idle workers steal from the ends of
    the others' shares. The tests marked `slow` go to the heads of those shares, so
    that none of them starts late and ends the pass alone."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # not an xdist worker
        return
    workers = int(workerinput["workercount"])
    slow = [item for item in items if item.get_closest_marker("slow")]
    if workers < 2 or not slow:
        return
    rest = iter([item for item in items if not item.get_closest_marker("slow")])
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for k in range(workers):
        # The sizes xdist's worksteal scheduler gives each worker at the start.
        share = remaining // (workers - k)
        heads = slow[k::workers]
        ordered += heads
        ordered += itertools.islice(rest, max(0, share - len(heads)))
        remaining -= share
    ordered += rest
    assert len(ordered) == len(items)
    items[:] = ordered
