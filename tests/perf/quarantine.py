"""The quarantine's cost, and a taxonomy schema's, side by side in one run.

`python -m tests.perf.quarantine`. Two rows, each a ratio of two wrk runs made back to
back in BENCH_ROUNDS (5) interleaved rounds of BENCH_SECONDS (5):

- 422s per second with the quarantine (the default: memory and its file) against a
  service with METRICS_REJECT_CAPACITY=0, both refusing the same single event (an
  unknown top-level field); target: at or above 0.8.
- events/s of a batch of BATCH events whose name has a JSON Schema in the taxonomy,
  against the same batch under a name without one (same metadata, same taxonomy).

Services are pinned to one core, wrk to the other (tests/perf/procs.py).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .procs import HOST, Server, wrk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
CONNECTIONS = 32
BATCH = 100
TARGET = 0.8
EVENT = "/api/metrics/event"
EVENTS = "/api/metrics/events"

# Refused for its unknown field, after the whole event was read: a typical 422.
REFUSED = (
    b'{"visitor_id":"v-8f3a2c91d4","event":"checkout_completed","event_id":"@ID@",'
    b'"metadata":{"plan":"pro","amount":12.5,"email":"a@b.example"},"amount":12.5}'
)
METADATA = (
    b'{"plan":"pro","amount":12.5,"items":[{"sku":"a-1","n":2},{"sku":"b-2","n":1}]}'
)
TYPED = b'{"visitor_id":"v-8f3a2c91d4","event":"%s","event_id":"@ID@","metadata":%s}'
SCHEMA = {
    "type": "object",
    "required": ["plan", "amount"],
    "properties": {
        "plan": {"enum": ["free", "pro", "team"]},
        "amount": {"type": "number", "minimum": 0},
        "items": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {
                    "sku": {"type": "string", "maxLength": 64},
                    "n": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
}
TAXONOMY = {
    "events": {
        "checkout_completed": {"schema": SCHEMA},
        "checkout_started": {"required": ["plan", "amount"]},
    }
}


def probe(port: int, path: str, body: bytes, status: int) -> None:
    """One request before measuring: the run must measure what it says it does."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body.replace(b"@ID@", b"probe").replace(b"@REQ@", b"probe"),
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    if response.status != status:
        raise RuntimeError(f"{path}: {response.status} {text[:300]!r}, not {status}")


def paired(
    runs: dict[str, Callable[[], float]], label: Callable[[str, float], str]
) -> dict[str, list[float]]:
    """ROUNDS rounds of every run, the order reversed every other round."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for round_no in range(ROUNDS):
        names = list(runs)
        if round_no % 2:
            names.reverse()  # neither side always runs first
        for name in names:
            value = runs[name]()
            results[name].append(value)
            print(f"round {round_no + 1} {label(name, value)}", file=sys.stderr)
    return results


def ratio(results: dict[str, list[float]], top: str, bottom: str) -> float:
    # Paired by round: the two ran back to back under the same background load.
    return statistics.median(
        a / b for a, b in zip(results[top], results[bottom], strict=True)
    )


def refusals(work: Path) -> tuple[dict[str, list[float]], int]:
    template = work / "refused.json"
    template.write_bytes(REFUSED)
    servers = {
        "on": Server.service(
            "quarantine-on", work, work / "on.jsonl", redact_keys="email"
        ),
        "off": Server.service(
            "quarantine-off", work, work / "off.jsonl", reject_capacity="0"
        ),
    }
    try:
        for server in servers.values():
            server.start()
            probe(server.port, EVENT, REFUSED, 422)

        cpu: dict[str, list[float]] = {name: [] for name in servers}

        def run(name: str) -> Callable[[], float]:
            server = servers[name]

            def once() -> float:
                before = server.cpu_seconds()
                # Every answer is a 422: wrk counts them as status errors.
                result = wrk(
                    server.url(EVENT),
                    connections=CONNECTIONS,
                    seconds=SECONDS,
                    template=template,
                )
                spent = server.cpu_seconds() - before
                cpu[name].append(spent / result.raw["requests"] * 1e6)
                return result.rps

            return once

        results = paired(
            {name: run(name) for name in servers},
            lambda name, v: (
                f"quarantine {name}: {v:,.0f} 422s/s, {cpu[name][-1]:.0f} CPU µs each"
            ),
        )
        # The server's CPU time per refusal: steadier than the rate on a busy machine.
        results["cpu on"], results["cpu off"] = cpu["on"], cpu["off"]
        recorded = _rejected_total(servers["on"].port)
    finally:
        for server in servers.values():
            server.stop()
    return results, recorded


def _rejected_total(port: int) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/api/metrics/behavior")
        snapshot = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    total: int = snapshot["rejected"]
    return total


def schemas(work: Path) -> dict[str, list[float]]:
    taxonomy = work / "taxonomy.json"
    taxonomy.write_text(json.dumps(TAXONOMY))
    templates = {}
    for name in ("checkout_completed", "checkout_started"):
        templates[name] = work / f"{name}.json"
        templates[name].write_bytes(TYPED % (name.encode(), METADATA))
    server = Server.service(
        "schema", work, work / "schema.jsonl", taxonomy=str(taxonomy)
    )
    try:
        server.start()
        for path in templates.values():
            probe(server.port, EVENT, path.read_bytes(), 202)
        url = server.url(EVENTS)

        def run(name: str) -> Callable[[], float]:
            return lambda: (
                wrk(
                    url,
                    connections=CONNECTIONS,
                    seconds=SECONDS,
                    template=templates[name],
                    batch=BATCH,
                ).rps
                * BATCH
            )

        return paired(
            {"with": run("checkout_completed"), "without": run("checkout_started")},
            lambda name, v: f"schema {name}: {v:,.0f} events/s",
        )
    finally:
        server.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-quarantine-") as folder:
        work = Path(folder)
        refused, recorded = refusals(work)
        typed = schemas(work)
    on, off = ratio(refused, "on", "off"), ratio(typed, "with", "without")
    by_cpu = ratio(refused, "cpu off", "cpu on")
    print("| row | with | without | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        "| 422s/s, single event, quarantine on / off (METRICS_REJECT_CAPACITY=0)"
        f" | {statistics.median(refused['on']):,.0f}"
        f" | {statistics.median(refused['off']):,.0f} | {on:.2f}"
        f" | ≥ {TARGET} {'met' if on >= TARGET else 'MISSED'} |"
    )
    print(
        "| the same, server CPU µs per 422 (ratio: off / on)"
        f" | {statistics.median(refused['cpu on']):,.0f}"
        f" | {statistics.median(refused['cpu off']):,.0f} | {by_cpu:.2f}"
        f" | ≥ {TARGET} {'met' if by_cpu >= TARGET else 'MISSED'} |"
    )
    print(
        f"| events/s, batches of {BATCH}, a taxonomy schema / none"
        f" | {statistics.median(typed['with']):,.0f}"
        f" | {statistics.median(typed['without']):,.0f} | {off:.2f} | (measured) |"
    )
    print(f"({recorded:,} refusals recorded by the quarantine-on service)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
