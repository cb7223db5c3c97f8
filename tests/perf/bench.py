"""Runs every figure of the Performance table side by side and prints the table.

Environment: BENCH_ROUNDS (5) interleaved rounds of BENCH_SECONDS (5) per wrk run,
BENCH_EVENTS (1,000,000) for the ring figures, BENCH_WAKEUPS (200) wait-for samples.
Arguments pick sections: `ingest`, `ring`, `wait` (default: all); `--tree PATH` serves the
`metrics_service` of another source tree (default: this one). The measurements take the
tree as a parameter: `tests.perf.sidebyside` runs them for several trees in one run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .data import EVENT_TEMPLATE, RARE_EVENT, write_sink
from .procs import CLIENT_CPU, HEALTH, HOST, ROOT, Server, WrkResult, request, wrk

EVENT_PATH = "/api/metrics/event"
BATCH_PATH = "/api/metrics/events"
SNAPSHOT_PATH = "/api/metrics/behavior"
WAIT_PATH = "/api/metrics/behavior/wait"
CONNECTIONS = 32
BATCH = 100

SINGLE_TARGET = "≥ 0.85 of ceiling"
BATCH_TARGET = "≥ 240,000 events/s"
SNAPSHOT_TARGET = "p50 ≤ 2 ms"
RSS_TARGET = "≤ 350 bytes"
REPLAY_TARGET = "≥ 500,000 lines/s"
FSYNC_TARGET = "≥ 0.5"
WAIT_TARGET = "p99 ≤ 5 ms"


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


# -- shared by the figures: rounds of runs ------------------------------------------

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def named(label: str, name: str) -> str:
    """A server's name (and log file) for one of several trees; `name` alone for one."""
    return f"{label}-{name}" if label else name


def in_turn(items: Sequence[T], round_no: int, alternate: bool) -> Sequence[T]:
    """The order of one round: as given, or reversed every other round when alternating."""
    return items[::-1] if alternate and round_no % 2 else items


def interleaved(
    runs: Mapping[K, Callable[[float], T]],
    describe: Callable[[K, T], str],
    *,
    alternate: bool = False,
) -> dict[K, list[T]]:
    """A 1 s warm-up of each run, then ROUNDS rounds of each for SECONDS, one at a time."""
    for name, run in runs.items():  # warm-up: imports, caches, first allocations
        log(f"warm-up {name}")
        run(1)
    results: dict[K, list[T]] = {name: [] for name in runs}
    for round_no in range(ROUNDS):
        for name in in_turn(list(runs), round_no, alternate):
            result = runs[name](SECONDS)
            results[name].append(result)
            log(f"round {round_no + 1}/{ROUNDS} {describe(name, result)}")
    return results


def at_once(
    groups: Sequence[Mapping[K, Callable[[float], T]]],
    describe: Callable[[K, T], str],
) -> dict[K, list[T]]:
    """A 1 s warm-up of each group, then ROUNDS rounds in which the groups take turns
    and the runs of a group go at once for SECONDS (a group of one runs alone).
    """
    results: dict[K, list[T]] = {name: [] for group in groups for name in group}
    assert len(results) == sum(map(len, groups)), "a run's name is in two groups"

    def run_group(
        pool: Executor,
        group: Mapping[K, Callable[[float], T]],
        seconds: float,
        round_no: int = 0,
    ) -> dict[K, T]:
        # Launched in the other order every other round: no run always starts first.
        names = in_turn(list(group), round_no, True)
        runs = pool.map(lambda name: group[name](seconds), names)
        return dict(zip(names, runs, strict=True))

    with ThreadPoolExecutor(max(map(len, groups), default=1)) as pool:
        for group in groups:
            log(f"warm-up {', '.join(map(str, group))}")
            run_group(pool, group, 1)
        for round_no in range(ROUNDS):
            for group in groups:
                values = run_group(pool, group, SECONDS, round_no)
                shown = []
                for name in group:
                    results[name].append(values[name])
                    shown.append(describe(name, values[name]))
                log(f"round {round_no + 1}/{ROUNDS}: {'; '.join(shown)}")
    return results


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median of round-by-round ratios: each pair shares the same background."""
    return median([x / y for x, y in zip(a, b, strict=False) if y])


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- 1, 2, 3, 7: throughput ----------------------------------------------------------


def event_template(work: Path) -> Path:
    template = work / "event.json"
    template.write_bytes(EVENT_TEMPLATE)
    return template


def load(
    server: Server, template: Path, *, batch: int = 0
) -> Callable[[float], WrkResult]:
    """A wrk run of single-event (or, with `batch`, batch) ingest against `server`."""
    path = BATCH_PATH if batch else EVENT_PATH
    return lambda seconds: wrk(
        server.url(path),
        connections=CONNECTIONS,
        seconds=seconds,
        template=template,
        batch=batch,
    )


def batch_works(server: Server) -> bool:
    return probe(server, "POST", BATCH_PATH, b"[" + one_event() + b"]") < 300


def ingest_servers(work: Path, tree: Path, label: str = "") -> dict[str, Server]:
    """The services of figures 2, 3 and 7 for one tree: default, fsync=never, =always."""
    return {
        "service": Server.service(
            named(label, "service"),
            work,
            work / f"{named(label, 'service')}.jsonl",
            cwd=tree,
        ),
        "never": Server.service(
            named(label, "never"),
            work,
            work / f"{named(label, 'never')}.jsonl",
            cwd=tree,
            fsync="never",
        ),
        "always": Server.service(
            named(label, "always"),
            work,
            work / f"{named(label, 'always')}.jsonl",
            cwd=tree,
            fsync="always",
        ),
    }


def describe_wrk(name: str, result: WrkResult) -> str:
    return (
        f"{name}: {result.rps:,.0f} req/s "
        f"p99 {result.p99_ms:.2f} ms errors {result.errors}"
    )


def ingest_section(work: Path, tree: Path = ROOT) -> list[Row]:
    template = event_template(work)
    ceiling = Server.ceiling(work)
    services = ingest_servers(work, tree)
    service, never, always = services["service"], services["never"], services["always"]
    servers = [ceiling, service, never, always]
    try:
        for server in servers:
            server.start()
        batch_ok = batch_works(service)
        runs: dict[str, Callable[[float], WrkResult]] = {
            "ceiling": load(ceiling, template),
            "single": load(service, template),
            "never": load(never, template),
            "always": load(always, template),
        }
        if batch_ok:
            runs["batch"] = load(service, template, batch=BATCH)
        results = interleaved(runs, describe_wrk)
    finally:
        for server in servers:
            server.stop()

    def rps(name: str) -> float:
        return median([r.rps for r in results.get(name, [])])

    def p99(name: str) -> float:
        return median([r.p99_ms for r in results.get(name, [])])

    def paired(a: str, b: str) -> float:
        # Each round runs the two back to back, so their ratio shares the same background.
        return paired_ratio(
            [r.rps for r in results.get(a, [])], [r.rps for r in results.get(b, [])]
        )

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
            SINGLE_TARGET,
            ratio >= 0.85,
        ),
    ]
    if batch_ok:
        events = rps("batch") * BATCH
        rows.append(
            Row(
                f"3. batch ingest, {BATCH} events/request",
                f"**{events:,.0f}** events/s ({rps('batch'):,.0f} req/s, p99 {p99('batch'):.1f} ms)",
                BATCH_TARGET,
                events >= 240_000,
            )
        )
    else:
        rows.append(
            Row(
                "3. batch ingest",
                "n/a (endpoint not available)",
                BATCH_TARGET,
                None,
            )
        )
    rows.append(
        Row(
            "7. fsync=always / fsync=never, 32 connections",
            f"**{fsync_ratio:.2f}** ({rps('always'):,.0f} / {rps('never'):,.0f} req/s)",
            FSYNC_TARGET,
            fsync_ratio >= 0.5,
        )
    )
    return rows


# -- 4, 5, 6: a ring of EVENTS -------------------------------------------------------


@dataclass
class Ring:
    """One tree's start-ups on an empty sink and on the sink of EVENTS lines."""

    empty_seconds: list[float] = field(default_factory=list)
    empty_rss: list[int] = field(default_factory=list)
    full_seconds: list[float] = field(default_factory=list)
    full_rss: list[int] = field(default_factory=list)
    # The server's CPU time when it became healthy: robust to other load on the core.
    empty_cpu: list[float] = field(default_factory=list)
    full_cpu: list[float] = field(default_factory=list)
    ring_size: int = EVENTS  # the smallest the full start-ups reached
    full: Server | None = None  # the last full start-up, left running for snapshots

    @property
    def filled(self) -> bool:
        return bool(self.full_seconds) and self.ring_size >= EVENTS

    @property
    def replay_seconds(self) -> float:
        return median(self.full_seconds) - median(self.empty_seconds)

    @property
    def replay_rate(self) -> float:
        """Lines/s: EVENTS over (start-up on the full sink - start-up on an empty one)."""
        return EVENTS / max(self.replay_seconds, 1e-9)

    @property
    def replay_cpus(self) -> list[float]:
        """Per round with a full start-up: its CPU time - the empty one's of that round."""
        empties = self.empty_cpu[-len(self.full_cpu) :] if self.full_cpu else []
        return [
            full - empty for full, empty in zip(self.full_cpu, empties, strict=True)
        ]

    @property
    def replay_cpu(self) -> float:
        return median(self.replay_cpus)

    @property
    def replay_cpu_rate(self) -> float:
        """Lines per CPU-second: as replay_rate, with the start-ups' CPU time."""
        return EVENTS / max(self.replay_cpu, 1e-9)

    @property
    def per_event(self) -> float:
        """Bytes of RSS per buffered event: (full - empty) / EVENTS."""
        return (median(self.full_rss) - median(self.empty_rss)) / EVENTS

    def stop(self) -> None:
        if self.full is not None:
            self.full.stop()
            self.full = None


def full_sink(work: Path) -> Path:
    log(f"writing a {EVENTS:,}-line sink")
    sink = work / "full.jsonl"
    write_sink(sink, EVENTS)
    return sink


def measure_rings(
    work: Path,
    trees: Mapping[str, Path],
    sink: Path,
    *,
    empties: int = 3,
    fulls: int = 1,
) -> dict[str, Ring]:
    """Start-ups of each tree (by label) with a ring of EVENTS, in rounds: each tree on an
    empty sink (`empties` rounds), then, in the last `fulls` rounds, each on `sink`; the
    trees start at once, so with several a spell of other load hits them alike (compare
    their CPU times, not their wall times). The last full start-up of each tree is left
    running (Ring.full) when it replayed every line: stop() it. The RSS is read after
    one snapshot request, so the snapshot path has run too.
    """
    capacity = str(EVENTS)
    labels = list(trees)
    rings = {label: Ring() for label in labels}
    rounds = max(empties, fulls)

    def empty_start(label: str, i: int) -> None:
        ring = rings[label]
        name = named(label, f"empty{i}")
        empty = Server.service(
            name, work, work / f"{name}.jsonl", cwd=trees[label], ring_capacity=capacity
        )
        try:
            ring.empty_seconds.append(empty.start())
            ring.empty_cpu.append(empty.cpu_seconds())
            probe(empty, "GET", SNAPSHOT_PATH + "?limit=50")
            ring.empty_rss.append(empty.rss())
        finally:
            empty.stop()
        if len(ring.empty_seconds) == empties:
            log(
                f"{named(label, 'empty')} start-up {median(ring.empty_seconds):.3f} s "
                f"({median(ring.empty_cpu):.3f} CPU-s), RSS {median(ring.empty_rss) / 2**20:.1f} MiB"
            )

    def full_start(label: str, i: int, keep: bool) -> None:
        ring = rings[label]
        name = named(label, f"full{i}" if fulls > 1 else "full")
        full = Server.service(
            name, work, sink, cwd=trees[label], ring_capacity=capacity
        )
        ring_size = 0
        try:
            seconds = full.start(ring_size=0)
            cpu = full.cpu_seconds()
            _, body = request(full.port, "GET", HEALTH)
            ring_size = json.loads(body).get("ring_size", 0)
            log(
                f"{named(label, 'full')} start-up {seconds:.3f} s "
                f"({cpu:.3f} CPU-s), ring_size {ring_size:,}"
            )
            ring.ring_size = min(ring.ring_size, ring_size)
            ring.full_seconds.append(seconds)
            ring.full_cpu.append(cpu)
            if ring_size >= EVENTS:
                probe(full, "GET", SNAPSHOT_PATH + "?limit=50")
                ring.full_rss.append(full.rss())
        finally:
            if keep and ring_size >= EVENTS:
                ring.full = full
            else:
                full.stop()

    def together(start: Callable[[str], None], order: Sequence[str]) -> None:
        with ThreadPoolExecutor(len(order)) as pool:
            list(pool.map(start, order))

    try:
        for i in range(rounds):
            order = in_turn(labels, i, True)
            if i < empties:
                together(functools.partial(empty_start, i=i), order)
            if i >= rounds - fulls:
                start = functools.partial(
                    full_start, i=i - (rounds - fulls), keep=i == rounds - 1
                )
                together(start, order)
    except BaseException:
        for ring in rings.values():
            ring.stop()
        raise
    return rings


def ring_section(work: Path, tree: Path = ROOT) -> list[Row]:
    ring = measure_rings(work, {"": tree}, full_sink(work))[""]
    rows: list[Row] = []
    try:
        if ring.filled and ring.full is not None:
            rows.append(
                Row(
                    f"6. replay of a {EVENTS:,}-line sink at start-up",
                    f"**{ring.replay_rate:,.0f}** lines/s ({ring.replay_seconds:.2f} s "
                    f"over a {median(ring.empty_seconds):.2f} s empty start-up)",
                    REPLAY_TARGET,
                    ring.replay_rate >= 500_000,
                )
            )
            rows.append(
                Row(
                    f"5. RSS per buffered event at {EVENTS:,} events",
                    f"**{ring.per_event:,.0f}** bytes ({median(ring.full_rss) / 2**20:,.0f} MiB - "
                    f"{median(ring.empty_rss) / 2**20:,.0f} MiB empty)",
                    RSS_TARGET,
                    ring.per_event <= 350,
                )
            )
            rows.extend(snapshot_rows(ring.full))
        else:
            rows.append(
                Row(
                    "4-6. ring figures",
                    f"n/a (replay filled {ring.ring_size:,} of {EVENTS:,})",
                    "",
                    None,
                )
            )
    finally:
        ring.stop()
    return rows


def snapshot_variants() -> dict[str, str]:
    return {
        "unfiltered": SNAPSHOT_PATH + "?limit=50",
        f"event={RARE_EVENT} (1% of the ring)": SNAPSHOT_PATH
        + f"?limit=50&event={RARE_EVENT}",
    }


@dataclass
class Latency:
    p50: float
    p99: float
    note: str = ""


def latencies(
    targets: Mapping[K, tuple[Server, str]],
    describe: Callable[[K], str],
    *,
    alternate: bool = False,
) -> dict[K, Latency]:
    """GET latency of each (server, path) at one connection: ROUNDS interleaved wrk runs
    of max(2, SECONDS / 2) s, medians of their p50 and p99; a request slower than 200 ms
    is timed one by one instead (5 requests, their median and maximum).
    """
    # wrk cannot give percentiles for a request slower than its run: time those here.
    slow = {}
    for key, (server, path) in targets.items():
        samples = timed_gets(server, path, 3)
        if median(samples) > 200:
            slow[key] = samples + timed_gets(server, path, 2)
    results: dict[K, list[WrkResult]] = {key: [] for key in targets if key not in slow}
    seconds = max(2.0, SECONDS / 2)
    for round_no in range(ROUNDS):
        for key in in_turn(list(results), round_no, alternate):
            server, path = targets[key]
            result = wrk(server.url(path), connections=1, seconds=seconds)
            results[key].append(result)
            log(
                f"round {round_no + 1}/{ROUNDS} snapshot {describe(key)}: "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms"
            )
    figures = {
        key: Latency(median([r.p50_ms for r in runs]), median([r.p99_ms for r in runs]))
        for key, runs in results.items()
    }
    for key, samples in slow.items():
        note = f" ({len(samples)} requests, too slow for wrk)"
        figures[key] = Latency(median(samples), max(samples), note)
    return figures


def snapshot_rows(server: Server) -> list[Row]:
    usable = {}
    rows: list[Row] = []
    for name, path in snapshot_variants().items():
        status = probe(server, "GET", path)
        if status == 200:
            usable[name] = (server, path)
        else:
            rows.append(
                Row(
                    f"4. snapshot limit=50, {name}",
                    f"n/a (HTTP {status})",
                    SNAPSHOT_TARGET,
                    None,
                )
            )
    figures = latencies(usable, str)
    for name, figure in figures.items():
        rows.append(
            Row(
                f"4. snapshot limit=50 at {EVENTS:,} events, {name}",
                f"p50 **{figure.p50:.2f}** ms, p99 {figure.p99:.2f} ms{figure.note}",
                SNAPSHOT_TARGET,
                figure.p50 <= 2,
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


async def wake_samples(
    port: int, count: int, first: int = 0
) -> tuple[list[float], str | None]:
    """`count` wake-ups in ms; `first` numbers their events, unique per server."""
    waiter = await asyncio.open_connection(HOST, port)
    poster = await asyncio.open_connection(HOST, port)
    reader = await asyncio.open_connection(HOST, port)
    samples: list[float] = []
    try:
        for i in range(first, first + count):
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


def wait_works(server: Server) -> int:
    """The wait endpoint's status for a short wait: 200 or 408 when it is there."""
    return probe(server, "GET", f"{WAIT_PATH}?count=1&timeout=0.05&event=bench_probe")


def wait_row(samples: Sequence[float], error: str | None) -> Row:
    if error or not samples:
        return Row("8. wait-for wake-up", f"n/a ({error})", WAIT_TARGET, None)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    return Row(
        "8. wait-for wake-up: POST's 202 → waiter's answer",
        f"p50 {p50:.2f} ms, p99 **{p99:.2f}** ms ({len(samples)} samples)",
        WAIT_TARGET,
        p99 <= 5,
    )


def wait_section(work: Path, tree: Path = ROOT) -> list[Row]:
    server = Server.service("wait", work, work / "wait.jsonl", cwd=tree)
    try:
        server.start()
        status = wait_works(server)
        if status not in (200, 408):
            return [
                Row("8. wait-for wake-up", f"n/a (HTTP {status})", WAIT_TARGET, None)
            ]
        samples, error = asyncio.run(wake_samples(server.port, WAKEUPS))
        parked = parked_row(server, work)
    finally:
        server.stop()
    return [wait_row(samples, error), parked]


PARKED = 1000  # abandoned-looking waiters, as in the hardening issue
PARKED_TARGET = "p50 with waiters <= 2x p50 without"


async def park(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` connections each parked on a wait that never matches."""
    writers = []
    for i in range(count):
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            f"GET {WAIT_PATH}?count=1&timeout=60&meta.k=nomatch-{i % 10} HTTP/1.1\r\n"
            f"Host: {HOST}\r\n\r\n".encode()
        )
        writers.append(writer)
    await asyncio.sleep(0.5)  # let the server read and park them all
    return writers


def parked_row(server: Server, work: Path) -> Row:
    """Single-event ingest with PARKED waiters parked against none (same server)."""
    template = event_template(work)
    run = load(server, template)
    alone = run(SECONDS)

    async def with_parked() -> WrkResult:
        writers = await park(server.port, PARKED)
        try:
            return await asyncio.to_thread(run, SECONDS)
        finally:
            for writer in writers:
                writer.close()

    crowded = asyncio.run(with_parked())
    ratio = crowded.p50_ms / alone.p50_ms if alone.p50_ms else float("inf")
    measured = (
        f"p50 {crowded.p50_ms:.2f} ms with {PARKED:,} waiters, {alone.p50_ms:.2f} ms "
        f"without: **{ratio:.2f}x** ({crowded.rps:,.0f} / {alone.rps:,.0f} req/s, "
        f"errors {crowded.errors})"
    )
    return Row(
        f"9. single-event ingest with {PARKED:,} parked waiters",
        measured,
        PARKED_TARGET,
        ratio <= 2 and crowded.errors == 0,
    )


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


SECTIONS: dict[str, Callable[[Path, Path], list[Row]]] = {
    "ingest": ingest_section,
    "ring": ring_section,
    "wait": wait_section,
}


def main(argv: list[str]) -> int:
    tree = ROOT
    if "--tree" in argv:
        at = argv.index("--tree")
        if at + 1 >= len(argv):
            print("--tree needs a path", file=sys.stderr)
            return 2
        tree = Path(argv[at + 1]).resolve()
        argv = argv[:at] + argv[at + 2 :]
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
                rows += SECTIONS[name](Path(tmp), tree)
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
