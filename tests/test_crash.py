"""A real server killed (SIGKILL) or stopped (SIGTERM) while clients are posting."""

from __future__ import annotations

import gzip
import signal
import threading
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event

from metrics_service.store.rotation import readable_segments
from metrics_service.testing import MetricsServer

# Servers killed under load, several times: make test starts these first.
pytestmark = pytest.mark.slow

CAPACITY = 100
WORKERS = 6


def file_seqs(path: Path) -> list[int]:
    """Seqs of the segments' and the sink's lines; every line whole, valid JSON."""
    seqs: list[int] = []
    for source in [*readable_segments(path), path]:
        if not source.exists():
            continue  # killed between renaming the full sink and recreating it
        data = source.read_bytes()
        if source.suffix == ".gz":
            data = gzip.decompress(data)
        assert data == b"" or data.endswith(b"\n")
        seqs += [orjson.loads(line)["seq"] for line in data.splitlines()]
    return seqs


class Load:
    """Worker threads posting until told to stop or the server goes away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[int] = []
        self.lock = threading.Lock()
        self.enough = threading.Event()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(w,)) for w in range(WORKERS)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads)

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                body = event(f"w{worker}", metadata={"i": i})
                try:
                    r = http.post(EVENT_URL, json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code != 202:
                    return  # shutting down: 503 or a refused connection
                with self.lock:
                    self.acked.append(r.json()["seq"])
                    if len(self.acked) >= 150:
                        self.enough.set()


def check_replay(server: MetricsServer, seqs: list[int]) -> None:
    """The ring after a restart holds the newest of `seqs` (read while no server ran)."""
    r = httpx.get(f"{server.url}{SNAPSHOT_URL}", params={"limit": CAPACITY})
    assert r.status_code == 200
    body = r.json()
    assert body["last_seq"] == (seqs[-1] if seqs else 0)
    assert body["total"] == min(CAPACITY, len(seqs))
    assert [e["seq"] for e in body["last_events"]] == seqs[::-1][:CAPACITY]
    assert sum(row["count"] for row in body["by_event"]) == body["total"]


def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    # Rotation on, so kills also land mid-rename and mid-gzip.
    env = {"METRICS_RING_CAPACITY": str(CAPACITY), "METRICS_ROTATE_BYTES": "20000"}
    acked: list[int] = []
    for _ in range(3):
        before = file_seqs(sink)
        server = MetricsServer(sink, env=env).start()
        try:
            check_replay(server, before)  # the restart succeeded and the ring is back
            with Load(server.url) as load:
                assert load.enough.wait(30)
                assert server.process is not None
                server.process.kill()
                server.process.wait(10)
            acked += load.acked
        finally:
            server.stop()
        seqs = file_seqs(sink)
        assert set(acked) <= set(seqs)
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat
    assert len(acked) >= 450
    with MetricsServer(sink, env=env) as server:
        check_replay(server, seqs)


def test_sigterm_mid_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    server = MetricsServer(sink).start()
    try:
        with Load(server.url) as load:
            assert load.enough.wait(30)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal after its graceful shutdown.
            assert server.process.wait(20) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    seqs = file_seqs(sink)
    assert load.acked
    assert set(load.acked) <= set(seqs)
    assert seqs == list(range(1, len(seqs) + 1))
    # A clean stop leaves nothing to repair, and the next start replays the ring.
    with MetricsServer(sink, env={"METRICS_RING_CAPACITY": str(CAPACITY)}) as again:
        check_replay(again, seqs)
    assert not (tmp_path / "m.jsonl.torn").exists()
