"""Events/s of each SDK format's batch path (Segment, PostHog, GA4 Measurement
Protocol), side by side with our own POST /api/metrics/events in the same run.

`python -m tests.perf.formats`. Environment: BENCH_ROUNDS (5) interleaved rounds of
BENCH_SECONDS (5) per wrk run. One service pinned to one core, wrk to the other; every
request carries BATCH events with fresh ids, so none is a duplicate. Target: each
format at or above 0.5 of our own batch endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from .data import EVENT_TEMPLATE
from .procs import CLIENT_CPU, Server

BATCH = 100
CONNECTIONS = 32
TARGET = 0.5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
SECONDS = float(os.environ.get("BENCH_SECONDS", 5))

# Each request's body is built once; "@REQ@" becomes a fresh prefix per request.
LUA = """
local body = nil
local counter = 0
local run = os.getenv("BENCH_RUN")
local fh = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
body = fh:read("*a")
fh:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local prefix = string.format("%s-%08d", run, counter)
  return wrk.format(nil, nil, nil, (body:gsub("@REQ@", prefix)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p99_us":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def ours() -> bytes:
    events = [EVENT_TEMPLATE.replace(b"@ID@", b"@REQ@-%04d" % i) for i in range(BATCH)]
    return b"[" + b",".join(events) + b"]"


def segment() -> bytes:
    """As segment-analytics-python sends a batch."""
    stamp = now()
    batch = [
        {
            "type": "track",
            "event": "page_view",
            "anonymousId": "v-8f3a2c91d4",
            "messageId": f"@REQ@-{i:04d}",
            "timestamp": stamp,
            "properties": {"path": "/pricing", "ref": "/", "w": 1280},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "integrations": {},
        }
        for i in range(BATCH)
    ]
    return json.dumps({"batch": batch, "sentAt": stamp, "writeKey": "wk"}).encode()


def posthog() -> bytes:
    """As posthog-python sends a batch."""
    stamp = now()
    batch = [
        {
            "event": "page_view",
            "distinct_id": "v-8f3a2c91d4",
            "uuid": f"@REQ@-{i:04d}",
            "timestamp": stamp,
            "properties": {
                "path": "/pricing",
                "ref": "/",
                "w": 1280,
                "$lib": "posthog-python",
                "$lib_version": "7.91.1",
            },
        }
        for i in range(BATCH)
    ]
    return json.dumps({"api_key": "phc", "batch": batch, "sent_at": stamp}).encode()


def ga4() -> bytes:
    """A Measurement Protocol request (Google takes 25 events; this service more).
    No event ids in GA4: the request id rides in a parameter instead."""
    events = [
        {
            "name": "page_view",
            "params": {"path": "/pricing", "ref": "/", "w": 1280, "id": f"@REQ@-{i}"},
        }
        for i in range(BATCH)
    ]
    return json.dumps({"client_id": "1234567890.1764763200", "events": events}).encode()


PATHS = {
    "ours": ("/api/metrics/events", ours),
    "segment": ("/segment/v1/batch", segment),
    "posthog": ("/posthog/batch/", posthog),
    "ga4": ("/ga4/mp/collect?measurement_id=G-BENCH", ga4),
}


def run_wrk(url: str, body: Path, script: Path) -> tuple[float, float, int]:
    """Events/s, p99 ms and errors of one wrk run."""
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_RUN": uuid.uuid4().hex[:8]}
    argv = [
        "taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{CONNECTIONS}",
        f"-d{max(1, round(SECONDS))}s", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{"))
    raw = json.loads(line)
    rps = raw["requests"] / (raw["duration_us"] / 1e6)
    return rps * BATCH, raw["p99_us"] / 1000, raw["errors"]


def probe(server: Server, path: str, body: bytes) -> None:
    """One request before measuring: a refused body would measure the refusal."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(
        "POST",
        path,
        body.replace(b"@REQ@", b"probe"),
        {"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    text = response.read()
    conn.close()
    if response.status >= 300:
        raise RuntimeError(f"{path}: {response.status} {text[:300]!r}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as folder:
        work = Path(folder)
        script = work / "formats.lua"
        script.write_text(LUA)
        bodies = {}
        for name, (_path, make) in PATHS.items():
            bodies[name] = work / f"{name}.json"
            bodies[name].write_bytes(make())
        server = Server.service("formats", work, work / "formats.jsonl")
        server.start()
        results: dict[str, list[float]] = {name: [] for name in PATHS}
        p99s: dict[str, list[float]] = {name: [] for name in PATHS}
        try:
            for name, (path, _) in PATHS.items():
                probe(server, path, bodies[name].read_bytes())
            for round_no in range(ROUNDS):
                names = list(PATHS)
                if round_no % 2:
                    names.reverse()  # neither side always runs first
                for name in names:
                    path = PATHS[name][0]
                    events, p99, errors = run_wrk(
                        server.url(path), bodies[name], script
                    )
                    if errors:
                        raise RuntimeError(f"{name}: {errors} errors in a wrk run")
                    results[name].append(events)
                    p99s[name].append(p99)
                    print(
                        f"round {round_no + 1} {name}: {events:,.0f} events/s "
                        f"p99 {p99:.1f} ms",
                        file=sys.stderr,
                    )
        finally:
            server.stop()
    base = results["ours"]
    print(f"| batch path, {BATCH} events/request | events/s | of ours | target |")
    print("|---|---|---|---|")
    for name in PATHS:
        median = statistics.median(results[name])
        # Paired by round: the two ran back to back under the same background load.
        ratio = statistics.median(
            a / b for a, b in zip(results[name], base, strict=True)
        )
        met = (
            "(reference)"
            if name == "ours"
            else ("met" if ratio >= TARGET else "MISSED")
        )
        print(
            f"| {name} ({PATHS[name][0]}) | {median:,.0f} "
            f"(p99 {statistics.median(p99s[name]):.1f} ms) | {ratio:.2f} | "
            f"≥ {TARGET} {met} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
