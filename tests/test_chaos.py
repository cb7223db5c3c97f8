"""Crash rounds under property-generated load (valid and invalid, single and batch).

tests/test_crash.py (durability) kills a server under a steady valid load; this adds the
mix: while hypothesis-generated bodies, many of them invalid, hit both endpoints from
several threads, the server gets SIGKILL (or SIGTERM), restarts on the same file, and:
- every acknowledged event is in the file with the seq it was given, exactly once;
- no refused event is, and a request cut off by the crash is all there or not at all;
- every line is valid, seqs run 1..N in file order, and replay restores the ring.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import types
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
from conftest import read_lines
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_properties import (
    MAX_BATCH,
    MAX_BODY,
    MAX_EVENT,
    valid_event,
    valid_events,
    valid_leaning_event,
)

from metrics_service import Config, create_app
from metrics_service.store import sink as sink_module
from metrics_service.testing import MetricsServer

# Crash rounds and fault rounds: make test starts them first.
pytestmark = pytest.mark.slow

ENV = {
    "METRICS_MAX_BATCH": str(MAX_BATCH),
    "METRICS_MAX_BODY_BYTES": str(MAX_BODY),
    "METRICS_MAX_EVENT_BYTES": str(MAX_EVENT),
    "METRICS_RING_CAPACITY": "100000",
    "METRICS_FSYNC": "never",
}
WORKERS = 8
# Hypothesis draws 20 requests per round (more overruns its buffer), after one that is
# valid by construction; each is sent 8 times with fresh event_ids, for 168 requests in
# flight around the crash.
DRAWN = 20
COPIES = 8

Request = tuple[str, bytes, list[str], bool]  # path, body, tagged event_ids, valid


def tag(obj: Any, event_id: str) -> tuple[Any, str | None]:
    """Give a dict event a unique event_id so it can be found in the file."""
    if isinstance(obj, dict):
        return {**obj, "event_id": event_id}, event_id
    return obj, None


def build(
    round_no: int, drawn: list[tuple[bool, list[Any]]], copies: int = COPIES
) -> list[Request]:
    requests: list[Request] = []
    for i, (batch, objs) in enumerate(drawn * copies):
        if not batch:
            objs = objs[:1]
        tagged = [tag(obj, f"r{round_no}-{i}-{j}") for j, obj in enumerate(objs)]
        items = [obj for obj, _ in tagged]
        ids = [event_id for _, event_id in tagged if event_id is not None]
        if batch:
            body = orjson.dumps(items)
            valid = 1 <= len(items) <= MAX_BATCH and all(map(valid_event, items))
            requests.append(
                ("/api/metrics/events", body, ids, valid and len(body) <= MAX_BODY)
            )
        else:
            body = orjson.dumps(items[0])
            valid = valid_event(items[0]) and len(body) <= MAX_BODY
            requests.append(("/api/metrics/event", body, ids, valid))
    return requests


REQUEST = st.tuples(
    st.booleans(),
    st.lists(valid_leaning_event(), min_size=1, max_size=MAX_BATCH + 1),
)
# The drawn requests may all be invalid (about 1 round in 100): a round needs one that
# is not, or it has nothing acknowledged to check. Valid with the longest tag too.
LONGEST_TAG = "r9999-9999-9"
ANCHOR = st.tuples(
    st.just(False),
    valid_events()
    .filter(lambda e: valid_event({**e, "event_id": LONGEST_TAG}))
    .map(lambda e: [e]),
)


class Round:
    def __init__(self, server: MetricsServer, requests: list[Request]) -> None:
        self.server = server
        self.requests = requests
        self.answers: list[httpx.Response | None] = [None] * len(requests)
        self.done = 0
        self.acked = 0
        self.lock = threading.Lock()
        self.half = threading.Event()
        self.local = threading.local()
        self.clients: list[httpx.Client] = []  # one per worker thread

    def send(self, index: int) -> None:
        path, body, _, _ = self.requests[index]
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(
                base_url=self.server.url, timeout=10
            )
            with self.lock:
                self.clients.append(client)
        try:
            self.answers[index] = client.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError:
            self.answers[index] = None  # cut off by the crash: outcome unknown
        answer = self.answers[index]
        with self.lock:
            self.done += 1
            self.acked += answer is not None and answer.status_code == 202
            # The crash comes once half the requests are answered, one at least with
            # a 202: what the round checks is that acknowledged events survive it.
            if self.done >= len(self.requests) // 2 and (
                self.acked or self.done == len(self.requests)
            ):
                self.half.set()

    def run(self, stop: str) -> None:
        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                for index in range(len(self.requests)):
                    pool.submit(self.send, index)
                assert self.half.wait(60), "half the requests (one acked) not done"
                process = self.server.process
                assert process is not None
                if stop == "kill":
                    process.kill()
                else:
                    process.terminate()
                process.wait(30)
        finally:
            for client in self.clients:
                client.close()


@dataclass
class Crashed:
    """What a round's crash left, for the start after it to check."""

    lines: list[dict[str, Any]]  # the whole lines, parsed
    kept: bytes  # the file up to its last newline
    torn: bytes  # the part line after it, if any


def check_restart(server: MetricsServer, sink: Path, crashed: Crashed) -> None:
    """The start after a crash: replay gives back the ring, the torn tail is moved."""
    snapshot = httpx.get(
        f"{server.url}/api/metrics/behavior", params={"limit": 100_000}
    ).json()
    assert list(reversed(snapshot["last_events"])) == crashed.lines
    assert snapshot["last_seq"] == len(crashed.lines)
    assert sink.read_bytes() == crashed.kept
    if crashed.torn:
        moved = sink.with_name(sink.name + ".torn").read_bytes()
        assert moved.endswith(crashed.torn + b"\n")


ROUNDS = iter(range(1_000))
LEDGER: dict[str, int] = {}  # event_id -> the seq its 202 promised
# The last round's crash: the next round's start checks the restart (one server
# start a round), and the module's last one is checked when the module ends.
CRASHED: list[Crashed] = []


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chaos") / "m.jsonl"
    yield path
    if CRASHED:
        with MetricsServer(path, env=ENV) as again:
            check_restart(again, path, CRASHED.pop())


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a crash
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(
    anchor=ANCHOR,
    drawn=st.lists(REQUEST, min_size=DRAWN, max_size=DRAWN),
    stop=st.sampled_from(["kill", "kill", "term"]),
)
def test_crash_rounds_under_property_load(
    sink: Path,
    anchor: tuple[bool, list[Any]],
    drawn: list[tuple[bool, list[Any]]],
    stop: str,
) -> None:
    round_no = next(ROUNDS)
    requests = build(round_no, [anchor, *drawn])
    assert requests[0][3], "the anchor request is valid"
    server = MetricsServer(sink, env=ENV).start()
    try:
        if CRASHED:  # the restart after the previous round's crash
            check_restart(server, sink, CRASHED.pop())
        chaos = Round(server, requests)
        chaos.run(stop)
    finally:
        server.stop()

    acknowledged = sum(
        1 for a in chaos.answers if a is not None and a.status_code == 202
    )
    answers = Counter("cut off" if a is None else a.status_code for a in chaos.answers)
    assert acknowledged, f"no request was acknowledged before the crash: {answers}"
    # Whether the stop cut a request off depends on timing (a SIGTERM drains
    # in-flight requests); when one was, the checks below cover it.
    data = sink.read_bytes()
    # SIGKILL can cut a write short (the kernel stops between pages): the file may end
    # in part of a line, of a write no one was answered for. The next start moves it
    # to m.jsonl.torn (checked below); the whole lines are what the checks are about.
    cut = data.rfind(b"\n") + 1
    torn = data[cut:]
    assert not torn or stop == "kill", f"{stop} left a torn line: {torn[:80]!r}"
    lines = [orjson.loads(line) for line in data[:cut].splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    by_id = {line["event_id"]: line for line in lines if "event_id" in line}
    ids_in_file = [line.get("event_id") for line in lines]
    assert len(set(ids_in_file)) == len(ids_in_file), "an event was stored twice"

    for (path, _, ids, valid), answer in zip(requests, chaos.answers, strict=True):
        if answer is None:
            present = [event_id in by_id for event_id in ids]
            assert all(present) or not any(present), f"{path} half stored: {ids}"
            continue
        assert answer.status_code < 500, answer.text
        assert (answer.status_code == 202) == valid, (answer.status_code, answer.text)
        if answer.status_code != 202:
            assert not any(event_id in by_id for event_id in ids)
            continue
        body = answer.json()
        first = body["seq"] if path.endswith("/event") else body["first_seq"]
        assert body["stored"] == len(ids)
        for offset, event_id in enumerate(ids):
            LEDGER[event_id] = first + offset
    for event_id, seq in LEDGER.items():
        assert event_id in by_id, f"acknowledged {event_id} (seq {seq}) was lost"
        assert by_id[event_id]["seq"] == seq

    # The next start on this file (the next round's, or the module's end) checks
    # that replay gives back the ring and that ingestion continues.
    CRASHED.append(Crashed(lines, data[:cut], torn))


# Disk faults in-process: hypothesis picks the requests and when the disk fails.

FAULTS = st.sampled_from([None, None, None, "full", "eio", "short"])
# Mostly valid, so that most faults meet a write.
MOSTLY_VALID = st.tuples(
    st.booleans(),
    st.lists(valid_events(), min_size=1, max_size=MAX_BATCH)
    | st.lists(valid_leaning_event(), min_size=1, max_size=MAX_BATCH + 1),
)


class FlakyDisk:
    """`os` as the sink module sees it, with write() failing while `fault` is set."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.module = types.ModuleType("os")
        self.module.__dict__.update(os.__dict__)
        self.module.write = self.write

    def write(self, fd: int, data: Any) -> int:
        if self.fault == "eio":
            raise OSError(errno.EIO, "Input/output error")
        if self.fault == "full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.fault == "short":
            self.fault = "full"  # half a line reaches the disk, then it is full
            return os.write(fd, bytes(data)[: max(1, len(data) // 2)])
        return os.write(fd, data)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyDisk:
    disk = FlakyDisk()
    monkeypatch.setattr(sink_module, "os", disk.module)
    return disk


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(steps=st.lists(st.tuples(MOSTLY_VALID, FAULTS), min_size=1, max_size=12))
def test_disk_faults_under_property_load(
    flaky: FlakyDisk, steps: list[tuple[tuple[bool, list[Any]], str | None]]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        jsonl = Path(folder) / "m.jsonl"
        config = Config(
            jsonl=jsonl,
            max_batch=MAX_BATCH,
            max_body_bytes=MAX_BODY,
            max_event_bytes=MAX_EVENT,
            ring_capacity=10_000,
        )
        requests = build(0, [request for request, _ in steps], copies=1)
        with TestClient(create_app(config)) as client:
            for (path, body, ids, valid), (_, fault) in zip(
                requests, steps, strict=True
            ):
                flaky.fault = fault
                answer = client.post(
                    path, content=body, headers={"Content-Type": "application/json"}
                )
                flaky.fault = None
                hypothesis.event(f"fault {fault}: {answer.status_code}")
                assert answer.status_code != 500, answer.text
                if not valid:
                    assert 400 <= answer.status_code < 500, answer.text
                elif fault is None:
                    assert answer.status_code == 202, answer.text
                else:
                    assert answer.status_code == 503, answer.text
                    assert "detail" in answer.json()
                    health = client.get("/api/metrics/behavior/health")
                    assert health.status_code == 503
                lines = read_lines(jsonl) if jsonl.exists() else []
                assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
                stored = {line.get("event_id") for line in lines}
                if answer.status_code != 202:
                    assert not stored & set(ids)
                else:
                    assert set(ids) <= stored
                snapshot = client.get(
                    "/api/metrics/behavior", params={"limit": 10_000}
                ).json()
                assert list(reversed(snapshot["last_events"])) == lines
