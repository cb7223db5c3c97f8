from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EVENT_URL, HEALTH_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store import sink
from metrics_service.testing import SERVE_ARGV, MetricsServer


def patch_os(monkeypatch: pytest.MonkeyPatch, **functions: Any) -> None:
    """Replace functions of `os` as the sink module sees them, and nowhere else."""
    fake = types.ModuleType("os")
    fake.__dict__.update(os.__dict__)
    fake.__dict__.update(functions)
    monkeypatch.setattr(sink, "os", fake)


def raising(exc: OSError) -> Any:
    def fail(*args: Any) -> Any:
        raise exc

    return fail


def test_write_error_answers_503_and_burns_nothing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, json=event()).status_code == 202
        with monkeypatch.context() as m:
            patch_os(m, write=raising(OSError(errno.EIO, "I/O error")))
            r = c.post(EVENT_URL, json=event("lost"))
            assert r.status_code == 503
            assert "I/O error" in r.json()["detail"]
            assert str(config.jsonl) in r.json()["detail"]
            h = c.get(HEALTH_URL)
            assert h.status_code == 503
            assert h.json()["ok"] is False
            assert "I/O error" in h.json()["error"]
            snap = c.get(SNAPSHOT_URL).json()
            assert snap["total"] == 1
            assert snap["last_seq"] == 1
        # The fault cleared: the next write goes through with the next unburned seq.
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 2
        assert c.get(HEALTH_URL).status_code == 200
    assert [line["seq"] for line in read_lines(config.jsonl)] == [1, 2]


def test_short_write_then_disk_full_leaves_no_half_line(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, json=event()).status_code == 202
        size = config.jsonl.stat().st_size
        calls = {"n": 0}
        real = os.write

        def write(fd: int, data: Any) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                return real(fd, bytes(data)[:20])  # the disk fills mid-line
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as m:
            patch_os(m, write=write)
            r = c.post(EVENT_URL, json=event())
            assert r.status_code == 503
            assert "No space left on device" in r.json()["detail"]
        assert config.jsonl.stat().st_size == size
        assert c.post(EVENT_URL, json=event()).json()["seq"] == 2
    assert [line["seq"] for line in read_lines(config.jsonl)] == [1, 2]


def test_permission_error_on_reopen_then_recovery(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, json=event()).status_code == 202
        config.jsonl.unlink()
        with monkeypatch.context() as m:
            denied = OSError(errno.EACCES, "Permission denied")
            patch_os(m, open=raising(denied))
            r = c.post(EVENT_URL, json=event())
            assert r.status_code == 503
            assert "Permission denied" in r.json()["detail"]
            assert c.get(HEALTH_URL).json()["ok"] is False
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 2
    assert [line["seq"] for line in read_lines(config.jsonl)] == [2]


def test_dev_full_sink_answers_503_and_recovers(tmp_path: Path) -> None:
    link = tmp_path / "m.jsonl"
    link.symlink_to("/dev/full")
    with MetricsServer(link) as server, httpx.Client(base_url=server.url) as http:
        r = http.post(EVENT_URL, json=event())
        assert r.status_code == 503
        assert "No space left on device" in r.json()["detail"]
        h = http.get(HEALTH_URL)
        assert h.status_code == 503
        assert h.json()["ok"] is False
        assert "No space left on device" in h.json()["error"]
        snap = http.get(SNAPSHOT_URL).json()
        assert (snap["total"], snap["last_seq"]) == (0, 0)
        # Point the path at a real file: the next write reopens it, no restart.
        link.unlink()
        r = http.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 1
        assert http.get(HEALTH_URL).status_code == 200
    assert [line["seq"] for line in read_lines(link)] == [1]


def test_dev_full_configured_directly(tmp_path: Path) -> None:
    with MetricsServer(Path("/dev/full")) as server:
        r = httpx.post(f"{server.url}{EVENT_URL}", json=event())
        assert r.status_code == 503
        assert "/dev/full" in r.json()["detail"]
        assert httpx.get(f"{server.url}{HEALTH_URL}").status_code == 503


def unprivileged_server(sink_path: Path) -> MetricsServer:
    """A collector that folder permissions apply to, even when the tests run as root."""
    command = SERVE_ARGV
    if os.geteuid() == 0:
        # Root without these capabilities obeys folder modes yet still reads its own
        # (maybe private) checkout. util-linux's setpriv; missing, the test fails.
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    return MetricsServer(
        sink_path, command=command, env={"PYTHONDONTWRITEBYTECODE": "1"}
    )


def test_read_only_folder_answers_503_then_recovers() -> None:
    folder = Path(tempfile.mkdtemp(prefix="metrics-ro-"))
    try:
        os.chmod(folder, 0o755)
        sink_path = folder / "m.jsonl"
        with (
            unprivileged_server(sink_path) as server,
            httpx.Client(base_url=server.url) as http,
        ):
            assert http.post(EVENT_URL, json=event()).status_code == 202
            os.rename(sink_path, folder / "m.jsonl.1")
            os.chmod(folder, 0o555)
            r = http.post(EVENT_URL, json=event())
            assert r.status_code == 503
            assert "Permission denied" in r.json()["detail"]
            assert http.get(HEALTH_URL).status_code == 503
            os.chmod(folder, 0o755)
            r = http.post(EVENT_URL, json=event())
            assert r.status_code == 202
            assert r.json()["seq"] == 2
            assert http.get(HEALTH_URL).status_code == 200
        assert [line["seq"] for line in read_lines(folder / "m.jsonl.1")] == [1]
        assert [line["seq"] for line in read_lines(sink_path)] == [2]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fsync_always_syncs_before_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = os.fsync
    patch_os(monkeypatch, fsync=lambda fd: calls.append("sync") or real(fd))
    config = Config(jsonl=tmp_path / "m.jsonl", fsync="always")
    with TestClient(create_app(config)) as c:
        for n in range(1, 4):
            assert c.post(EVENT_URL, json=event()).status_code == 202
            assert len(calls) >= n


def test_fsync_never_does_not_sync_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    patch_os(monkeypatch, fsync=lambda fd: calls.append("sync"))
    config = Config(jsonl=tmp_path / "m.jsonl", fsync="never")
    with TestClient(create_app(config)) as c:
        for _ in range(3):
            assert c.post(EVENT_URL, json=event()).status_code == 202
        assert calls == []
    assert calls  # closing still flushes


def test_fsync_interval_runs_off_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = threading.Event()
    threads: list[str] = []

    def fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        synced.set()

    patch_os(monkeypatch, fsync=fsync)
    config = Config(jsonl=tmp_path / "m.jsonl", fsync="interval", fsync_interval=0.05)
    with TestClient(create_app(config)) as c:
        loop_thread = c.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
        assert c.post(EVENT_URL, json=event()).status_code == 202
        assert synced.wait(10)
        assert threads[0] != loop_thread


def test_a_failing_listener_does_not_hang_writers(config: Config) -> None:
    app = create_app(config)
    with TestClient(app) as c:

        def broken(entries: object) -> None:
            raise RuntimeError("subscriber bug")

        app.state.service.writer.subscribe(broken)
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 1
    assert len(read_lines(config.jsonl)) == 1


def test_a_bug_while_storing_answers_500_instead_of_hanging(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False) as c:

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("ring bug")

        monkeypatch.setattr(app.state.service.ring, "extend", broken)
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error"}
        monkeypatch.undo()
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202


@pytest.mark.parametrize("batch", [False, True])
def test_an_event_id_refused_by_a_failed_write_is_stored_on_retry(
    config: Config, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    url = EVENT_URL.replace("/event", "/events") if batch else EVENT_URL
    body: Any = event(event_id="retry-me")
    if batch:
        body = [body, event(event_id="retry-me-too")]
    with TestClient(create_app(config)) as c:
        with monkeypatch.context() as m:
            patch_os(m, write=raising(OSError(errno.ENOSPC, "No space left")))
            assert c.post(url, json=body).status_code == 503
        r = c.post(url, json=body)
        assert r.status_code == 202
        assert r.json()["duplicates"] == 0
        assert r.json()["stored"] == (2 if batch else 1)
        assert c.post(url, json=body).json()["duplicates"] == (2 if batch else 1)
    ids = [line["event_id"] for line in read_lines(config.jsonl)]
    assert ids == (["retry-me", "retry-me-too"] if batch else ["retry-me"])
