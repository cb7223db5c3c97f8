"""A soak: SOAK_SECONDS (60) of single-event ingest at 32 connections, memory sampled.

Passes when wrk saw no error and no non-2xx answer, memory stays flat once the ring and
the de-duplication window are full, and afterwards the file holds exactly `last_seq`
valid lines in seq order. Run with `python -m tests.perf.soak`; exits 1 on failure.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from .data import EVENT_TEMPLATE
from .procs import HEALTH, Server, WrkResult, request, wrk

EVENT_PATH = "/api/metrics/event"
CONNECTIONS = 32
SECONDS = float(os.environ.get("SOAK_SECONDS", 60))
# Small enough that both fill in the first seconds, so the rest shows the steady state.
RING = 20_000
DEDUPE = 20_000
MiB = 1024 * 1024


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def check_file(path: Path, last_seq: int) -> list[str]:
    problems: list[str] = []
    expected = 1
    with path.open("rb") as lines:
        for line in lines:
            if not line.endswith(b"\n"):
                problems.append(f"line {expected} has no newline")
            try:
                seq = json.loads(line)["seq"]
            except (ValueError, KeyError):
                problems.append(f"line {expected} is not a stored event")
                break
            if seq != expected:
                problems.append(f"line {expected} has seq {seq}")
                break
            expected += 1
    if expected - 1 != last_seq:
        problems.append(f"the file has {expected - 1} lines, last_seq is {last_seq}")
    return problems


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        work = Path(folder)
        template = work / "event.json"
        template.write_bytes(EVENT_TEMPLATE)
        server = Server.service(
            "soak",
            work,
            work / "metrics.jsonl",
            ring_capacity=str(RING),
            dedupe_window=str(DEDUPE),
        )
        server.start()
        try:
            return soak(server, template)
        finally:
            server.stop()


def soak(server: Server, template: Path) -> int:
    samples: list[tuple[float, int]] = []
    result: list[WrkResult] = []
    runner = threading.Thread(
        target=lambda: result.append(
            wrk(
                server.url(EVENT_PATH),
                connections=CONNECTIONS,
                seconds=SECONDS,
                template=template,
            )
        )
    )
    log(f"{SECONDS:g} s of single-event ingest at {CONNECTIONS} connections")
    began = time.monotonic()
    runner.start()
    while runner.is_alive():
        samples.append((time.monotonic() - began, server.rss()))
        runner.join(timeout=1)
    status, body = request(server.port, "GET", HEALTH)
    health = json.loads(body)
    _, snapshot = request(server.port, "GET", "/api/metrics/behavior?limit=0")
    last_seq = json.loads(snapshot)["last_seq"]

    problems: list[str] = []
    if not result:
        problems.append("wrk did not finish")
    elif result[0].errors:
        problems.append(f"wrk counted errors: {result[0].raw}")
    if status != 200 or not health["ok"]:
        problems.append(f"health after the soak: {status} {health}")
    if health["ring_size"] != min(RING, last_seq):
        problems.append(f"ring holds {health['ring_size']} of {last_seq} events")

    # Steady state: after the first quarter the ring and the id window are full.
    steady = [rss for at, rss in samples if at >= SECONDS / 4]
    first = statistics.median(steady[: max(1, len(steady) // 4)]) if steady else 0
    last = statistics.median(steady[-max(1, len(steady) // 4) :]) if steady else 0
    growth = last - first
    # Generous: allocator noise is a few MiB; a leak of even 100 bytes an event is more.
    allowed = max(16 * MiB, first * 0.15)
    if growth > allowed:
        problems.append(
            f"memory grew {growth / MiB:.1f} MiB in the steady state "
            f"({first / MiB:.1f} -> {last / MiB:.1f} MiB)"
        )
    problems += check_file(server_jsonl(server), last_seq)

    if result:
        r = result[0]
        log(
            f"{r.raw['requests']:,} requests, {r.rps:,.0f}/s, p50 {r.p50_ms:.1f} ms, "
            f"p99 {r.p99_ms:.1f} ms, errors {r.errors}"
        )
    peak = max((rss for _, rss in samples), default=0)
    log(
        f"RSS steady {first / MiB:.1f} -> {last / MiB:.1f} MiB (peak {peak / MiB:.1f}); "
        f"{last_seq:,} events in the file"
    )
    for problem in problems:
        log(f"FAIL: {problem}")
    log("soak passed" if not problems else "soak FAILED")
    return 1 if problems else 0


def server_jsonl(server: Server) -> Path:
    return Path(server.extra_env["METRICS_JSONL"])


if __name__ == "__main__":
    sys.exit(main())
