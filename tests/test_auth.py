from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from metrics_service import cli
from metrics_service.app import create_app
from metrics_service.http.auth import Guards, split_token
from metrics_service.routes import ENDPOINTS
from metrics_service.settings import Config
from metrics_service.testing import CLEAN_EXIT, MetricsServer

INGEST = "ingest-secret-7f3a"
READ = "read-secret-91bc"
EVENT = {"visitor_id": "visitor-1", "event": "page_view"}

READ_ROUTES = [
    ("GET", "/api/metrics/behavior"),
    ("DELETE", "/api/metrics/behavior"),
    ("GET", "/api/metrics/behavior/wait?timeout=0"),
    ("GET", "/api/metrics/behavior/timeseries"),
    ("GET", "/api/metrics/behavior/stream"),
    ("GET", "/metrics"),
]
INGEST_ROUTES = ["/api/metrics/event", "/api/metrics/events"]
OPEN_ROUTES = ["/api/metrics/behavior/health", "/openapi.json", "/tracker.js", "/"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = Config(jsonl=tmp_path / "m.jsonl", ingest_token=INGEST, read_token=READ)
    with TestClient(create_app(config)) as c:
        yield c


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert INGEST not in response.text
    assert READ not in response.text


@pytest.mark.parametrize(("method", "path"), READ_ROUTES)
def test_read_routes_refuse_a_missing_token(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path)
    assert_401(response)
    assert "required" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), READ_ROUTES)
def test_read_routes_refuse_the_ingest_token(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(
        method, path, headers={"Authorization": f"Bearer {INGEST}"}
    )
    assert_401(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("path", INGEST_ROUTES)
def test_ingest_refuses_a_missing_or_wrong_token(client: TestClient, path: str) -> None:
    body = [EVENT] if path.endswith("events") else EVENT
    assert_401(client.post(path, json=body))
    assert_401(client.post(path, json=body, headers={"Authorization": "Bearer x"}))
    assert_401(
        client.post(path, json=body, headers={"Authorization": f"Basic {INGEST}"})
    )
    assert_401(
        client.post(path, json=body, headers={"Authorization": f"Bearer {READ}"})
    )
    assert_401(client.post(f"{path}?token={INGEST}x", json=body))
    assert (
        client.get("/api/metrics/behavior", params={"token": READ}).json()["total"] == 0
    )


def test_ingest_accepts_the_bearer_header(client: TestClient) -> None:
    response = client.post(
        "/api/metrics/event", json=EVENT, headers={"Authorization": f"Bearer {INGEST}"}
    )
    assert response.status_code == 202
    assert response.json()["seq"] == 1


def test_ingest_accepts_the_query_token_as_sendbeacon_sends_it(
    client: TestClient,
) -> None:
    response = client.post(
        f"/api/metrics/event?token={INGEST}",
        content=b'{"visitor_id": "visitor-1", "event": "page_view"}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 202
    snapshot = client.get(
        "/api/metrics/behavior", headers={"Authorization": f"bearer {READ}"}
    )
    assert snapshot.status_code == 200
    assert snapshot.json()["total"] == 1


def test_the_token_param_is_not_an_unknown_filter(client: TestClient) -> None:
    response = client.get(f"/api/metrics/behavior?token={READ}&limit=5")
    assert response.status_code == 200
    assert response.json()["total"] == 0
    typo = client.get(f"/api/metrics/behavior?token={READ}&limt=5")
    assert typo.status_code == 422
    assert READ not in typo.text


def test_refusals_are_counted_in_metrics(client: TestClient) -> None:
    assert_401(client.get("/api/metrics/behavior"))
    assert_401(client.post("/api/metrics/event", json=EVENT))
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {READ}"})
    assert metrics.status_code == 200
    line = next(
        line
        for line in metrics.text.splitlines()
        if line.startswith("metrics_requests_rejected") and 'status="401"' in line
    )
    assert line.endswith(" 2.0")


def test_reset_needs_the_read_token(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {INGEST}"}
    assert (
        client.post("/api/metrics/event", json=EVENT, headers=auth).status_code == 202
    )
    assert_401(client.delete("/api/metrics/behavior", headers=auth))
    response = client.delete(
        "/api/metrics/behavior", headers={"Authorization": f"Bearer {READ}"}
    )
    assert response.status_code == 200
    assert response.json()["cleared"] == 1


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_open_routes_need_no_token(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code != 401


def test_health_stays_open(client: TestClient) -> None:
    response = client.get("/api/metrics/behavior/health")
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_a_preflight_is_not_asked_for_a_token(client: TestClient) -> None:
    response = client.options(
        "/api/metrics/event",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_a_cross_origin_401_is_readable_by_the_page(client: TestClient) -> None:
    response = client.post(
        "/api/metrics/event", json=EVENT, headers={"Origin": "https://shop.example"}
    )
    assert_401(response)
    assert response.headers["access-control-allow-origin"] in (
        "*",
        "https://shop.example",
    )


def test_without_tokens_everything_is_open(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        assert c.post("/api/metrics/event", json=EVENT).status_code == 202
        response = c.get("/api/metrics/behavior?token=anything")
        assert response.status_code == 200
        assert response.json()["total"] == 1


def test_only_the_ingest_token_leaves_reading_open(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ingest_token=INGEST)
    with TestClient(create_app(config)) as c:
        assert_401(c.post("/api/metrics/event", json=EVENT))
        assert c.get("/api/metrics/behavior").status_code == 200


def test_only_the_read_token_leaves_ingest_open(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", read_token=READ)
    with TestClient(create_app(config)) as c:
        assert c.post("/api/metrics/event", json=EVENT).status_code == 202
        assert_401(c.get("/api/metrics/behavior"))


def test_unknown_paths_do_not_reveal_themselves_without_a_token(
    client: TestClient,
) -> None:
    assert_401(client.get("/api/metrics/secret"))


def test_guard_of_paths() -> None:
    guard_of = Guards(ENDPOINTS).of
    assert guard_of("/api/metrics/event") == "ingest"
    assert guard_of("/api/metrics/events") == "ingest"
    assert guard_of("/api/metrics/behavior") == "read"
    assert guard_of("/api/metrics/behavior/stream") == "read"
    assert guard_of("/api/metrics/behavior/health") == "open"
    assert guard_of("/static/dashboard.js") == "open"
    assert guard_of("/static/../api/metrics/behavior") == "read"
    assert guard_of("/static/") == "read"
    assert guard_of("/api/metrics/behavior/health/") == "read"


def test_a_root_path_does_not_change_what_is_guarded(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", read_token=READ)
    with TestClient(create_app(config), root_path="/collector") as c:
        assert_401(c.get("/collector/api/metrics/behavior"))
        assert c.get("/collector/api/metrics/behavior/health").status_code == 200
        ok = c.get(
            "/collector/api/metrics/behavior",
            headers={"Authorization": f"Bearer {READ}"},
        )
        assert ok.status_code == 200


def test_split_token_keeps_other_params_byte_for_byte() -> None:
    assert split_token(b"") == (None, b"")
    assert split_token(b"a=1&meta.x=%C3%A9") == (None, b"a=1&meta.x=%C3%A9")
    assert split_token(b"token=s%2Bx+y&a=%20&b") == (b"s+x y", b"a=%20&b")
    assert split_token(b"a=1&token=") == (b"", b"a=1")


def test_tokens_never_reach_the_access_log(tmp_path: Path) -> None:
    env = {"METRICS_INGEST_TOKEN": INGEST, "METRICS_READ_TOKEN": READ}
    # A real server with uvicorn's access log on; its output goes to `out.log`.
    server = MetricsServer(
        tmp_path / "m.jsonl",
        env=env,
        args=["--access-log", "--log-level", "info"],
        log=tmp_path / "out.log",
    )
    with server:
        url = server.url
        beacon = httpx.post(
            f"{url}/api/metrics/event?token={INGEST}",
            content=b'{"visitor_id": "visitor-1", "event": "page_view"}',
            headers={"Content-Type": "text/plain"},
        )
        assert beacon.status_code == 202
        read = httpx.get(f"{url}/api/metrics/behavior?limit=1&token={READ}")
        assert read.status_code == 200
        assert read.json()["total"] == 1
        wrong = httpx.get(f"{url}/api/metrics/behavior?token=guess-{READ}")
        assert wrong.status_code == 401
    server.stop(expect=CLEAN_EXIT)
    output = (tmp_path / "out.log").read_text()
    assert "/api/metrics/behavior?limit=1" in output
    assert INGEST not in output
    assert READ not in output


def test_binding_a_public_address_without_tokens_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []
    # serve runs uvicorn through cli._run; nothing listens, and SIGTERM stays pytest's.
    monkeypatch.setattr(cli, "_run", lambda config: calls.append(config) or True)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    for name in ("METRICS_INGEST_TOKEN", "METRICS_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    jsonl = str(tmp_path / "m.jsonl")
    with caplog.at_level(logging.WARNING, logger="metrics_service"):
        argv = ["serve", "--host", "0.0.0.0", "--port", "0", "--jsonl", jsonl]
        assert cli.main(argv) == 0
    assert calls
    assert "0.0.0.0" in caplog.text
    assert "METRICS_READ_TOKEN" in caplog.text


@pytest.mark.parametrize(
    ("host", "ingest", "read", "warns"),
    [
        ("127.0.0.1", None, None, False),
        ("localhost", None, None, False),
        ("::1", None, None, False),
        ("0.0.0.0", None, None, True),
        ("::", None, None, True),
        ("192.168.1.10", INGEST, None, True),
        ("0.0.0.0", None, READ, False),
        ("0.0.0.0", INGEST, READ, False),
    ],
)
def test_bind_warning(
    host: str, ingest: str | None, read: str | None, warns: bool
) -> None:
    config = Config(host=host, ingest_token=ingest, read_token=read)
    warning = cli.bind_warning(config)
    assert (warning is not None) == warns
    if warning:
        assert host in warning
        assert INGEST not in warning


def test_stream_and_wait_take_the_query_token_as_eventsource_sends_it(
    tmp_path: Path,
) -> None:
    env = {"METRICS_INGEST_TOKEN": INGEST, "METRICS_READ_TOKEN": READ}
    with MetricsServer(tmp_path / "m.jsonl", env=env) as server:
        url = server.url + "/api/metrics/behavior"
        posted = httpx.post(
            f"{server.url}/api/metrics/event",
            json=EVENT,
            headers={"Authorization": f"Bearer {INGEST}"},
        )
        assert posted.status_code == 202
        with httpx.stream(
            "GET", f"{url}/stream", params={"token": READ, "after": 0}, timeout=10
        ) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("id:")) == "id: 1"
        waited = httpx.get(
            f"{url}/wait", params={"token": READ, "count": 1, "timeout": 5}, timeout=10
        )
        assert waited.status_code == 200
        assert waited.json()["matched"] == 1
        refused = httpx.get(f"{url}/stream", params={"token": INGEST}, timeout=10)
        assert refused.status_code == 401


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (INGEST, "the Authorization header has no scheme"),
        ("Bearer", "the Authorization header has no token after 'Bearer'"),
        ("Bearer   ", "the Authorization header has no token after 'Bearer'"),
        (f"Basic {INGEST}", "the Authorization scheme is not Bearer"),
        (f"Token {INGEST}", "the Authorization scheme is not Bearer"),
    ],
)
def test_a_malformed_authorization_header_says_what_is_wrong(
    client: TestClient, authorization: str, says: str
) -> None:
    response = client.post(
        "/api/metrics/event", json=EVENT, headers={"Authorization": authorization}
    )
    assert_401(response)
    detail = response.json()["detail"]
    assert detail.startswith(says + ": send 'Authorization: Bearer <token>'")
    assert "a token is required" not in detail
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_a_missing_token_still_says_one_is_required(client: TestClient) -> None:
    response = client.post("/api/metrics/event", json=EVENT)
    assert_401(response)
    assert response.json()["detail"].startswith("a token is required")
    assert "error=" not in response.headers["www-authenticate"]


def test_sdk_routes_are_guarded_by_their_own_key() -> None:
    guard_of = Guards(ENDPOINTS).of
    assert guard_of("/segment/v1/t") == "sdk"
    assert guard_of("/segment/v1/batch") == "sdk"
    assert guard_of("/posthog/e/") == "sdk"
    assert guard_of("/ga4/mp/collect") == "sdk"
    assert guard_of("/ga4/g/collect") == "sdk"
    assert guard_of("/ga4/debug/mp/collect") == "open"
    # Templates with a suffix: one plain segment, nothing else.
    assert guard_of("/segment/v1/projects/wk_1/settings") == "open"
    assert guard_of("/posthog/array/phc_1/config.js") == "open"
    assert guard_of("/posthog/array/phc_1/config") == "open"
    assert guard_of("/segment/v1/projects/../settings") == "read"
    assert guard_of("/segment/v1/projects/a/b/settings") == "read"
    assert guard_of("/segment/v1/projects//settings") == "read"


def test_sdk_routes_take_the_token_or_their_key_and_nothing_else(
    client: TestClient,
) -> None:
    call = {"type": "track", "event": "e", "anonymousId": "anon-123456"}
    assert client.post("/segment/v1/t", json=call).status_code == 401
    assert client.post(f"/segment/v1/t?token={INGEST}", json=call).status_code == 200
    bearer = {"Authorization": f"Bearer {INGEST}"}
    assert client.post("/segment/v1/t", json=call, headers=bearer).status_code == 200
    keyed = {**call, "writeKey": INGEST}
    assert client.post("/segment/v1/t", json=keyed).status_code == 200
    # The read token opens no ingest route, whichever way it comes.
    response = client.post("/segment/v1/t", json={**call, "writeKey": READ})
    assert_401(response)
    response = client.post(f"/segment/v1/t?token={READ}", json=call)
    assert_401(response)
