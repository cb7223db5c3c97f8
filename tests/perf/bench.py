"""Runs every figure of the Performance table side by side and prints the table.

Environment: BENCH_ROUNDS (5) interleaved rounds of BENCH_SECONDS (5) per wrk run,
BENCH_EVENTS (1,000,000) for the ring figures, BENCH_WAKEUPS (200) wait-for samples.
Arguments pick sections: `ingest`, `ring`, `wait` (default: all).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import EVENT_TEMPLATE, RARE_EVENT, write_sink
from .procs import CLIENT_CPU, HOST, Server, WrkResult, request, wrk

EVENT_PATH = "/api/metrics/event"
BATCH_PATH = "/api/metrics/events"
SNAPSHOT_PATH = "/api/metrics/behavior"
WAIT_PATH = "/api/metrics/behavior/wait"
CONNECTIONS = 32
BATCH = 100


def setting(name: str, default: float) -> float:
    return float(os.environ.get(f"BENCH_{name}", default))


ROUNDS = int(setting("ROUNDS", 5))
SECONDS = setting("SECONDS", 5)
EVENTS = int(setting("EVENTS", 1_000_000))
WAKEUPS = int(setting("WAKEUPS", 200))


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    met: bool | None  # None: no target, or not measurable

    def cells(self) -> list[str]:
        mark = {True: "yes", False: "**no**", None: ""}[self.met]
        return [self.figure, self.measured, self.target, mark]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def probe(server: Server, method: str, path: str, body: bytes | None = None) -> int:
    status, _ = request(server.port, method, path, body)
    return status


def one_event(event_id: str = "probe-0000", name: str = "page_view") -> bytes:
    body = EVENT_TEMPLATE.replace(b"@ID@", event_id.encode())
    return body.replace(b'"page_view"', json.dumps(name).encode())


# -- 1, 2, 3, 7: throughput ----------------------------------------------------------


def ingest_section(work: Path) -> list[Row]:
    template = work / "event.json"
    template.write_bytes(EVENT_TEMPLATE)
    ceiling = Server.ceiling(work)
    service = Server.service("service", work, work / "service.jsonl")
    never = Server.service("never", work, work / "never.jsonl", fsync="never")
    always = Server.service("always", work, work / "always.jsonl", fsync="always")
    servers = [ceiling, service, never, always]
    try:
        for server in servers:
            server.start()
        batch_ok = probe(service, "POST", BATCH_PATH, b"[" + one_event() + b"]") < 300
        runs: dict[str, Callable[[float], WrkResult]] = {
            "ceiling": lambda seconds: wrk(
                ceiling.url(EVENT_PATH), connections=CONNECTIONS, seconds=seconds, template=template
            ),
            "single": lambda seconds: wrk(
                service.url(EVENT_PATH), connections=CONNECTIONS, seconds=seconds, template=template
            ),
            "never": lambda seconds: wrk(
                never.url(EVENT_PATH), connections=CONNECTIONS, seconds=seconds, template=template
            ),
            "always": lambda seconds: wrk(
                always.url(EVENT_PATH), connections=CONNECTIONS, seconds=seconds, template=template
            ),
        }  # fmt: skip
        if batch_ok:
            runs["batch"] = lambda seconds: wrk(
                service.url(BATCH_PATH),
                connections=CONNECTIONS,
                seconds=seconds,
                template=template,
                batch=BATCH,
            )
        for name, run in runs.items():  # warm-up: imports, caches, first allocations
            log(f"warm-up {name}")
            run(1)
        results: dict[str, list[WrkResult]] = {name: [] for name in runs}
        for round_no in range(ROUNDS):
            for name, run in runs.items():
                result = run(SECONDS)
                results[name].append(result)
                log(
                    f"round {round_no + 1}/{ROUNDS} {name}: {result.rps:,.0f} req/s "
                    f"p99 {result.p99_ms:.2f} ms errors {result.errors}"
                )
    finally:
        for server in servers:
            server.stop()

    def rps(name: str) -> float:
        return median([r.rps for r in results.get(name, [])])

    def p99(name: str) -> float:
        return median([r.p99_ms for r in results.get(name, [])])

    def paired(a: str, b: str) -> float:
        # Each round runs the two back to back, so their ratio shares the same background.
        pairs = zip(results.get(a, []), results.get(b, []), strict=False)
        return median([x.rps / y.rps for x, y in pairs])

    ratio = paired("single", "ceiling")
    fsync_ratio = paired("always", "never")
    rows = [
        Row(
            "1. ceiling: empty Starlette POST, 32 connections",
            f"{rps('ceiling'):,.0f} req/s, p99 {p99('ceiling'):.1f} ms",
            "(reference)",
            None,
        ),
        Row(
            "2. single-event ingest, 32 connections",
            f"{rps('single'):,.0f} req/s, p99 {p99('single'):.1f} ms, "
            f"**{ratio:.2f}** of ceiling",
            "≥ 0.85 of ceiling",
            ratio >= 0.85,
        ),
    ]
    if batch_ok:
        events = rps("batch") * BATCH
        rows.append(
            Row(
                f"3. batch ingest, {BATCH} events/request",
                f"**{events:,.0f}** events/s ({rps('batch'):,.0f} req/s, p99 {p99('batch'):.1f} ms)",
                "≥ 240,000 events/s",
                events >= 240_000,
            )
        )
    else:
        rows.append(
            Row(
                "3. batch ingest",
                "n/a (endpoint not available)",
                "≥ 240,000 events/s",
                None,
            )
        )
    rows.append(
        Row(
            "7. fsync=always / fsync=never, 32 connections",
            f"**{fsync_ratio:.2f}** ({rps('always'):,.0f} / {rps('never'):,.0f} req/s)",
            "≥ 0.5",
            fsync_ratio >= 0.5,
        )
    )
    return rows


# -- 4, 5, 6: a ring of EVENTS -------------------------------------------------------


def ring_section(work: Path) -> list[Row]:
    capacity = str(EVENTS)
    log(f"writing a {EVENTS:,}-line sink")
    full_sink = work / "full.jsonl"
    write_sink(full_sink, EVENTS)
    empty_times: list[float] = []
    empty_rss: list[int] = []
    for i in range(3):
        empty = Server.service(
            f"empty{i}", work, work / f"empty{i}.jsonl", ring_capacity=capacity
        )
        try:
            empty_times.append(empty.start())
            probe(empty, "GET", SNAPSHOT_PATH + "?limit=50")
            empty_rss.append(empty.rss())
        finally:
            empty.stop()
    log(
        f"empty start-up {median(empty_times):.3f} s, RSS {median(empty_rss) / 2**20:.1f} MiB"
    )
    full = Server.service("full", work, full_sink, ring_capacity=capacity)
    rows: list[Row] = []
    try:
        full_time = full.start(ring_size=0)
        _, body = request(full.port, "GET", "/api/metrics/behavior/health")
        ring_size = json.loads(body).get("ring_size", 0)
        log(f"full start-up {full_time:.3f} s, ring_size {ring_size:,}")
        if ring_size >= EVENTS:
            replay = EVENTS / max(full_time - median(empty_times), 1e-9)
            rows.append(
                Row(
                    f"6. replay of a {EVENTS:,}-line sink at start-up",
                    f"**{replay:,.0f}** lines/s ({full_time - median(empty_times):.2f} s "
                    f"over a {median(empty_times):.2f} s empty start-up)",
                    "≥ 500,000 lines/s",
                    replay >= 500_000,
                )
            )
            probe(full, "GET", SNAPSHOT_PATH + "?limit=50")
            per_event = (full.rss() - median(empty_rss)) / EVENTS
            rows.append(
                Row(
                    f"5. RSS per buffered event at {EVENTS:,} events",
                    f"**{per_event:,.0f}** bytes ({full.rss() / 2**20:,.0f} MiB - "
                    f"{median(empty_rss) / 2**20:,.0f} MiB empty)",
                    "≤ 350 bytes",
                    per_event <= 350,
                )
            )
            rows.extend(snapshot_rows(full))
        else:
            rows.append(
                Row(
                    "4-6. ring figures",
                    f"n/a (replay filled {ring_size:,} of {EVENTS:,})",
                    "",
                    None,
                )
            )
    finally:
        full.stop()
    return rows


def snapshot_rows(server: Server) -> list[Row]:
    variants = {
        "unfiltered": SNAPSHOT_PATH + "?limit=50",
        f"event={RARE_EVENT} (1% of the ring)": SNAPSHOT_PATH
        + f"?limit=50&event={RARE_EVENT}",
    }
    usable = {}
    rows: list[Row] = []
    for name, path in variants.items():
        status = probe(server, "GET", path)
        if status == 200:
            usable[name] = path
        else:
            rows.append(
                Row(
                    f"4. snapshot limit=50, {name}",
                    f"n/a (HTTP {status})",
                    "p50 ≤ 2 ms",
                    None,
                )
            )
    # wrk cannot give percentiles for a request slower than its run: time those here.
    slow = {}
    for name, path in usable.items():
        samples = timed_gets(server, path, 3)
        if median(samples) > 200:
            slow[name] = samples + timed_gets(server, path, 2)
    results: dict[str, list[WrkResult]] = {
        name: [] for name in usable if name not in slow
    }
    seconds = max(2.0, SECONDS / 2)
    for round_no in range(ROUNDS):
        for name in results:
            result = wrk(server.url(usable[name]), connections=1, seconds=seconds)
            results[name].append(result)
            log(
                f"round {round_no + 1}/{ROUNDS} snapshot {name}: "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms"
            )
    figures = {
        name: (median([r.p50_ms for r in runs]), median([r.p99_ms for r in runs]), "")
        for name, runs in results.items()
    }
    for name, samples in slow.items():
        note = f" ({len(samples)} requests, too slow for wrk)"
        figures[name] = (median(samples), max(samples), note)
    for name, (p50, p99, note) in figures.items():
        rows.append(
            Row(
                f"4. snapshot limit=50 at {EVENTS:,} events, {name}",
                f"p50 **{p50:.2f}** ms, p99 {p99:.2f} ms{note}",
                "p50 ≤ 2 ms",
                p50 <= 2,
            )
        )
    return rows


def timed_gets(server: Server, path: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        probe(server, "GET", path)
        samples.append((time.perf_counter() - began) * 1000)
    return samples


# -- 8: wait-for wake-up --------------------------------------------------------------


async def http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    body: bytes = b"",
) -> tuple[int, bytes, float]:
    """One keep-alive request; returns the status, the body and when the answer was complete."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
    )
    if body:
        head += "Content-Type: application/json\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    data = await reader.readexactly(length)
    return int(status_line.split()[1]), data, time.perf_counter()


async def wake_samples(port: int, count: int) -> tuple[list[float], str | None]:
    waiter = await asyncio.open_connection(HOST, port)
    poster = await asyncio.open_connection(HOST, port)
    reader = await asyncio.open_connection(HOST, port)
    samples: list[float] = []
    try:
        for i in range(count):
            _, body, _ = await http(*reader, "GET", SNAPSHOT_PATH + "?limit=0")
            after = json.loads(body)["last_seq"]
            wait = asyncio.create_task(
                http(
                    *waiter,
                    "GET",
                    f"{WAIT_PATH}?count=1&timeout=5&after={after}&event=wake_probe",
                )
            )
            # Let the waiter get registered before the event it waits for arrives.
            await asyncio.sleep(0.01)
            post_status, _, posted = await http(
                *poster,
                "POST",
                EVENT_PATH,
                one_event(f"wake-{i}-{time.time_ns()}", "wake_probe"),
            )
            wait_status, _, woken = await wait
            if post_status != 202 or wait_status != 200:
                return samples, f"HTTP {post_status} / {wait_status}"
            samples.append((woken - posted) * 1000)
    finally:
        for _, writer in (waiter, poster, reader):
            writer.close()
    return samples, None


def wait_section(work: Path) -> list[Row]:
    server = Server.service("wait", work, work / "wait.jsonl")
    target = "p99 ≤ 5 ms"
    try:
        server.start()
        status = probe(
            server, "GET", f"{WAIT_PATH}?count=1&timeout=0.05&event=bench_probe"
        )
        if status not in (200, 408):
            return [Row("8. wait-for wake-up", f"n/a (HTTP {status})", target, None)]
        samples, error = asyncio.run(wake_samples(server.port, WAKEUPS))
    finally:
        server.stop()
    if error or not samples:
        return [Row("8. wait-for wake-up", f"n/a ({error})", target, None)]
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [
        Row(
            "8. wait-for wake-up: POST's 202 → waiter's answer",
            f"p50 {p50:.2f} ms, p99 **{p99:.2f}** ms ({len(samples)} samples)",
            target,
            p99 <= 5,
        )
    ]


# -- the table ------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} x {model}, Linux {platform.release()}, Python {platform.python_version()}"


def table(rows: list[Row]) -> str:
    order = sorted(rows, key=lambda row: row.figure.split(".", 1)[0])
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in order]
    return "\n".join(lines)


SECTIONS = {"ingest": ingest_section, "ring": ring_section, "wait": wait_section}


def main(argv: list[str]) -> int:
    chosen = argv or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        print(
            f"unknown section(s) {unknown}; choose from {list(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    # The harness itself (and the wait-for client) stays off the server's core.
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    began = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        for name in chosen:
            log(f"section {name}")
            try:
                rows += SECTIONS[name](Path(tmp))
            except Exception as exc:  # report, never fail: the table is the output
                log(f"section {name} failed: {exc!r}")
                rows.append(
                    Row(
                        f"{name} section",
                        f"n/a ({type(exc).__name__}: {exc})",
                        "",
                        None,
                    )
                )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Measured {when} on {machine()}; server on CPU 0 (taskset), wrk and client on CPU 1;"
    )
    print(
        f"{ROUNDS} interleaved rounds of {SECONDS:g} s per figure, medians (ratios: median "
        "of each round's ratio); "
        f"{time.monotonic() - began:.0f} s in all.\n"
    )
    print(table(rows))
    return 0
