from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from metrics_service import client as client_module
from metrics_service.client import MetricsClient
from metrics_service.ingest import test_tag


def test_the_carriers_are_the_collectors() -> None:
    # client.py repeats them so that loading the plugin does not import the app.
    assert client_module.TEST_ID_HEADER == test_tag.HEADER
    assert client_module.TEST_ID_QUERY == test_tag.QUERY
    assert client_module.TEST_ID_COOKIE == test_tag.COOKIE
    assert client_module.REJECTED_PATH == "/api/metrics/behavior/rejected"


def answering(status: int, body: object) -> MetricsClient:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    client = MetricsClient("http://collector.test").view("run:t.py::test_x")
    client._http = httpx.Client(
        base_url=client.base_url, transport=httpx.MockTransport(handler)
    )
    client.seen = seen  # type: ignore[attr-defined]
    return client


def test_rejections_from_a_collector_without_a_quarantine_is_none() -> None:
    client = answering(404, {"detail": "Not Found"})
    assert client.rejections() is None
    [request] = client.seen  # type: ignore[attr-defined]
    assert request.url.path == "/api/metrics/behavior/rejected"
    assert request.url.params["test_id"] == "run:t.py::test_x"


def test_rejections_other_errors_raise() -> None:
    client = answering(401, {"detail": "read token required"})
    with pytest.raises(httpx.HTTPStatusError):
        client.rejections()


def test_tag_context_needs_a_view() -> None:
    client = MetricsClient("http://collector.test")
    with client, pytest.raises(ValueError, match="needs a view"):
        client.tag_context(None)  # type: ignore[arg-type]


def test_the_plugin_asks_a_collector_without_quarantine_once() -> None:
    from metrics_service import testing

    view = answering(404, {"detail": "Not Found"})
    state = SimpleNamespace(quarantine=True)
    config = SimpleNamespace(stash=pytest.Stash())
    config.stash[testing._STATE] = state  # type: ignore[assignment]
    item = SimpleNamespace(
        stash=pytest.Stash(), config=config, get_closest_marker=lambda name: None
    )
    item.stash[testing._VIEW] = view
    testing.pytest_runtest_call(item)  # type: ignore[arg-type]
    assert state.quarantine is False
    testing.pytest_runtest_call(item)  # type: ignore[arg-type]
    assert len(view.seen) == 1  # type: ignore[attr-defined]


def test_the_fixture_tags_a_sync_context_and_warns_for_an_async_one() -> None:
    from metrics_service import testing

    client = MetricsClient("http://collector.test")
    view = client.view("run:t.py::test_x")
    calls: list[str] = []

    class SyncContext:
        pages: list[object] = []

        def add_init_script(self, script: str) -> None:
            calls.append("script")

        def add_cookies(self, cookies: list[dict[str, str]]) -> None:
            calls.append("cookies")

    class AsyncContext:
        async def add_init_script(self, script: str) -> None:
            raise AssertionError("never called: nothing would await it")

    testing._tag(view, SyncContext())
    assert calls == ["script", "cookies"]
    testing._tag(view, object())  # a fixture named context that is not Playwright's
    with pytest.warns(pytest.PytestWarning, match="async Playwright context"):
        testing._tag(view, AsyncContext())
    client.close()
