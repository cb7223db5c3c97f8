"""Every figure of `make bench` for two (or more) source trees in one run, side by side.

    python -m tests.perf.sidebyside BASE_TREE [NEW_TREE ...]
    python -m tests.perf.compare --all BASE_TREE [NEW_TREE ...]   # the same

NEW_TREE defaults to this checkout. Each tree is a checkout whose own `metrics_service` is
served (`python -m metrics_service serve`, run in the tree with the tree first on
PYTHONPATH, so the editable install of this checkout is not picked up), with its C
extension built in place. The harness, the ceiling and the interpreter (this venv's, with
its uvicorn) are this checkout's. To compare a change with the commit before it:

    git worktree add /tmp/perf-base 185e19c    # the commit before the change
    (cd /tmp/perf-base && /work/main/.venv/bin/python setup.py build_ext --inplace -q)
    .venv/bin/python -m tests.perf.sidebyside /tmp/perf-base .

An A/A run (a second worktree at the same commit as BASE_TREE) shows the noise: its
new/base column should stay near 1.00. The figures taken with the trees at once (1-3, 5,
6) stay within a few percent even with other load on the machine; those that need a
server alone (4, 7, 8) move with that load, by tens of percent when tests run beside.

How each figure is taken (servers on CPU 0, wrk and the harness on CPU 1, as in bench):

- 1-3. single-event and batch ingest: each round has three turns: the stock-uvicorn
  ceiling alone; the ceiling and each tree's service under single-event load at once,
  sharing CPU 0 as `compare` does; the same under batch load (the ceiling still
  single-event). A server's rate counts requests per second of its own CPU time (utime
  + stime from /proc), so an unequal share of the core does not count, and a ratio is
  the median of the rounds' ratios: a slow spell of the machine hits all sides alike.
  The absolute figures (≈) are a round's rate / the ceiling's on the shared core x the
  ceiling's rate alone in that round: what the service would serve alone, as in bench.
- 7. fsync=always / fsync=never: a figure about waiting for the disk, which a shared core
  would hide, so each server runs alone, both of a tree back to back, trees alternating.
- 5, 6. RSS per event and replay lines/s: BENCH_REPLAYS (3) rounds in which the trees
  start at once on an empty sink, then at once on the sink of BENCH_EVENTS lines. Replay
  is the server's CPU time when health first answers, full - empty in the same round
  (not the wall time, which counts the other servers' turns); medians, ratio: median
  of the rounds'. Measured from the outside (CPU time, VmRSS), so no module of the
  trees is imported.
- 4, 8. snapshot and wait-for latencies: the servers of all trees up, each measured
  alone, rounds (or turns of 10 wake-ups) alternating between trees.

Environment as bench: BENCH_ROUNDS (5) rounds of BENCH_SECONDS (5), BENCH_EVENTS
(1,000,000), BENCH_WAKEUPS (200) per tree, plus BENCH_REPLAYS (3). `--sections ingest,ring`
runs some sections only. A default run of two trees takes about 4-5 minutes on a
2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .bench import (
    BATCH,
    BATCH_TARGET,
    EVENTS,
    FSYNC_TARGET,
    REPLAY_TARGET,
    ROUNDS,
    RSS_TARGET,
    SECONDS,
    SINGLE_TARGET,
    SNAPSHOT_TARGET,
    WAIT_TARGET,
    WAKEUPS,
    Ring,
    at_once,
    batch_works,
    describe_wrk,
    event_template,
    full_sink,
    in_turn,
    ingest_servers,
    interleaved,
    latencies,
    load,
    log,
    machine,
    measure_rings,
    median,
    paired_ratio,
    percentile,
    probe,
    setting,
    snapshot_variants,
    wait_works,
    wake_samples,
)
from .procs import CLIENT_CPU, ROOT, Server, WrkResult, package_dir

REPLAYS = int(setting("REPLAYS", 3))
WAIT_CHUNK = 10  # wake-ups per turn: a spell of other load hits every tree alike


@dataclass
class Figure:
    """One row: a cell per tree label, each other tree's ratio to the first's value."""

    name: str
    target: str
    cells: dict[str, str] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def ratio_cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def mark(text: str, met: bool) -> str:
    return text if met else f"{text} ✗"


# -- 1, 2, 3, 7 -----------------------------------------------------------------------


@dataclass
class Share:
    """A wrk run against a server that shared the core, and the CPU time it used."""

    result: WrkResult
    cpu: float

    @property
    def per_cpu(self) -> float:
        """Requests per second of the server's own CPU time."""
        return self.result.raw["requests"] / self.cpu if self.cpu > 0 else math.nan


def on_cpu(
    server: Server, run: Callable[[float], WrkResult]
) -> Callable[[float], Share]:
    def measured(seconds: float) -> Share:
        before = server.cpu_seconds()
        result = run(seconds)
        return Share(result, server.cpu_seconds() - before)

    return measured


def describe_share(name: str, share: Share) -> str:
    return (
        f"{name} {share.per_cpu:,.0f}/CPU-s ({share.result.rps:,.0f} req/s, "
        f"{share.cpu:.2f} CPU-s, errors {share.result.errors})"
    )


def ingest(work: Path, trees: Mapping[str, Path]) -> list[Figure]:
    labels = list(trees)
    base = labels[0]
    template = event_template(work)
    ceiling = Server.ceiling(work)
    services = {
        label: ingest_servers(work, tree, label) for label, tree in trees.items()
    }
    servers = [ceiling] + [s for group in services.values() for s in group.values()]
    try:
        for server in servers:
            server.start()
        batch_ok = {label: batch_works(services[label]["service"]) for label in labels}
        with_batch = [label for label in labels if batch_ok[label]]

        def single(label: str) -> Callable[[float], Share]:
            server = services[label]["service"]
            return on_cpu(server, load(server, template))

        def batch(label: str) -> Callable[[float], Share]:
            server = services[label]["service"]
            return on_cpu(server, load(server, template, batch=BATCH))

        log(
            "ingest rounds: the ceiling alone; the ceiling and each tree's single-event "
            "ingest at once; the ceiling and each tree's batch ingest at once"
        )
        groups: list[dict[str, Callable[[float], Share]]] = [
            {"ceiling alone": on_cpu(ceiling, load(ceiling, template))},
            {
                "ceiling": on_cpu(ceiling, load(ceiling, template)),
                **{label: single(label) for label in labels},
            },
        ]
        if with_batch:
            groups.append(
                {
                    "ceiling (batch round)": on_cpu(ceiling, load(ceiling, template)),
                    **{f"{label} batch": batch(label) for label in with_batch},
                }
            )
        shared = at_once(groups, describe_share)
        log("fsync=never and =always: one server at a time, trees alternating")
        fsync = interleaved(
            {
                f"{label}-{policy}": load(services[label][policy], template)
                for label in labels
                for policy in ("never", "always")
            },
            describe_wrk,
            alternate=True,
        )
    finally:
        for server in servers:
            server.stop()

    def per_cpu(name: str) -> list[float]:
        return [share.per_cpu for share in shared.get(name, [])]

    alone = [share.result.rps for share in shared["ceiling alone"]]
    alone_p99 = median([share.result.p99_ms for share in shared["ceiling alone"]])
    top = Figure(
        "1. ceiling: empty Starlette POST (stock uvicorn, httptools), 32 connections",
        "(reference)",
    )
    top.cells = {label: "same server" for label in labels}
    top.cells[base] = f"{median(alone):,.0f} req/s alone, p99 {alone_p99:.1f} ms"
    rows = [top]

    def estimate(name: str, ceiling_name: str, scale: float = 1) -> float:
        """Per round: name's rate / the ceiling's on the shared core x the ceiling's alone."""
        rounds = zip(per_cpu(name), per_cpu(ceiling_name), alone, strict=False)
        return median([x * scale / c * a for x, c, a in rounds if c])

    figure = Figure("2. single-event ingest, 32 connections / ceiling", SINGLE_TARGET)
    for label in labels:
        ratio = paired_ratio(per_cpu(label), per_cpu("ceiling"))
        figure.cells[label] = mark(
            f"**{ratio:.2f}** (≈ {estimate(label, 'ceiling'):,.0f} req/s)",
            ratio >= 0.85,
        )
        if label != base:
            figure.ratios[label] = paired_ratio(per_cpu(label), per_cpu(base))
    rows.append(figure)

    figure = Figure(f"3. batch ingest, {BATCH} events/request", BATCH_TARGET)
    for label in labels:
        if not batch_ok[label]:
            figure.cells[label] = "n/a (endpoint not available)"
            continue
        events = estimate(f"{label} batch", "ceiling (batch round)", BATCH)
        figure.cells[label] = mark(f"**≈ {events:,.0f}** events/s", events >= 240_000)
        if label != base and batch_ok[base]:
            figure.ratios[label] = paired_ratio(
                per_cpu(f"{label} batch"), per_cpu(f"{base} batch")
            )
    rows.append(figure)

    def rps(name: str) -> list[float]:
        return [result.rps for result in fsync[name]]

    figure = Figure("7. fsync=always / fsync=never, 32 connections", FSYNC_TARGET)
    ratios = {}
    for label in labels:
        ratios[label] = paired_ratio(rps(f"{label}-always"), rps(f"{label}-never"))
        figure.cells[label] = mark(
            f"**{ratios[label]:.2f}** ({median(rps(f'{label}-always')):,.0f} / "
            f"{median(rps(f'{label}-never')):,.0f} req/s)",
            ratios[label] >= 0.5,
        )
        if label != base:
            figure.ratios[label] = ratios[label] / ratios[base]
    rows.append(figure)
    return rows


# -- 4, 5, 6 --------------------------------------------------------------------------


def ring(work: Path, trees: Mapping[str, Path]) -> list[Figure]:
    labels = list(trees)
    base = labels[0]
    rings = measure_rings(work, trees, full_sink(work), empties=REPLAYS, fulls=REPLAYS)
    try:
        return ring_figures(rings, labels, base)
    finally:
        for each in rings.values():
            each.stop()


def ring_figures(
    rings: Mapping[str, Ring], labels: list[str], base: str
) -> list[Figure]:
    replay = Figure(f"6. replay of a {EVENTS:,}-line sink at start-up", REPLAY_TARGET)
    rss = Figure(f"5. RSS per buffered event at {EVENTS:,} events", RSS_TARGET)
    for label in labels:
        r = rings[label]
        if not r.filled:
            replay.cells[label] = rss.cells[label] = (
                f"n/a (replay filled {r.ring_size:,} of {EVENTS:,})"
            )
            continue
        replay.cells[label] = mark(
            f"**{r.replay_cpu_rate:,.0f}** lines per CPU-s ({r.replay_cpu:.2f} CPU-s "
            f"over {median(r.empty_cpu):.2f} CPU-s empty)",
            r.replay_cpu_rate >= 500_000,
        )
        rss.cells[label] = mark(
            f"**{r.per_event:,.0f}** bytes ({median(r.full_rss) / 2**20:,.0f} - "
            f"{median(r.empty_rss) / 2**20:,.0f} MiB)",
            r.per_event <= 350,
        )
        if label != base and rings[base].filled:
            replay.ratios[label] = paired_ratio(rings[base].replay_cpus, r.replay_cpus)
            rss.ratios[label] = r.per_event / rings[base].per_event

    variants = snapshot_variants()
    snapshots = {
        name: Figure(
            f"4. snapshot limit=50 at {EVENTS:,} events, {name}: p50", SNAPSHOT_TARGET
        )
        for name in variants
    }
    targets: dict[tuple[str, str], tuple[Server, str]] = {}
    for name, path in variants.items():
        for label in labels:
            server = rings[label].full
            if server is None:
                snapshots[name].cells[label] = "n/a (no full ring)"
                continue
            status = probe(server, "GET", path)
            if status == 200:
                targets[(name, label)] = (server, path)
            else:
                snapshots[name].cells[label] = f"n/a (HTTP {status})"
    figures = latencies(targets, lambda key: f"{key[0]} [{key[1]}]", alternate=True)
    for (name, label), latency in figures.items():
        snapshots[name].cells[label] = mark(
            f"**{latency.p50:.2f}** ms (p99 {latency.p99:.2f} ms){latency.note}",
            latency.p50 <= 2,
        )
    for name, figure in snapshots.items():
        if (name, base) not in figures:
            continue
        for label in labels[1:]:
            if (name, label) in figures:
                figure.ratios[label] = (
                    figures[(name, label)].p50 / figures[(name, base)].p50
                )
    return [*snapshots.values(), rss, replay]


# -- 8 --------------------------------------------------------------------------------


def wait(work: Path, trees: Mapping[str, Path]) -> list[Figure]:
    labels = list(trees)
    base = labels[0]
    figure = Figure(
        "8. wait-for wake-up: POST's 202 → waiter's answer, p99", WAIT_TARGET
    )
    servers = {
        label: Server.service(
            f"{label}-wait", work, work / f"{label}-wait.jsonl", cwd=tree
        )
        for label, tree in trees.items()
    }
    samples: dict[str, list[float]] = {label: [] for label in labels}
    errors: dict[str, str] = {}
    try:
        for label, server in servers.items():
            server.start()
            status = wait_works(server)
            if status not in (200, 408):
                errors[label] = f"HTTP {status}"
        for i, first in enumerate(range(0, WAKEUPS, WAIT_CHUNK)):
            count = min(WAIT_CHUNK, WAKEUPS - first)
            for label in in_turn(labels, i, True):
                if label in errors:
                    continue
                got, error = asyncio.run(
                    wake_samples(servers[label].port, count, first=first)
                )
                samples[label] += got
                if error:
                    errors[label] = error
        log(
            "wait-for: "
            + ", ".join(
                f"{label} p50 {percentile(samples[label], 0.5):.2f} ms "
                f"p99 {percentile(samples[label], 0.99):.2f} ms"
                for label in labels
            )
        )
    finally:
        for server in servers.values():
            server.stop()
    p99 = {label: percentile(samples[label], 0.99) for label in labels}
    for label in labels:
        if label in errors or not samples[label]:
            figure.cells[label] = f"n/a ({errors.get(label)})"
            continue
        figure.cells[label] = mark(
            f"**{p99[label]:.2f}** ms (p50 {percentile(samples[label], 0.5):.2f} ms, "
            f"{len(samples[label])} samples)",
            p99[label] <= 5,
        )
        if label != base and base not in errors and samples[base]:
            figure.ratios[label] = p99[label] / p99[base]
    return [figure]


# -- the table ------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Path, Mapping[str, Path]], list[Figure]]] = {
    "ingest": ingest,
    "ring": ring,
    "wait": wait,
}


def labels_for(count: int) -> list[str]:
    if count == 2:
        return ["base", "new"]
    return ["base"] + [f"new{n}" for n in range(1, count)]


def describe_tree(tree: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        return f"{tree} (commit {out.stdout.strip()})"
    except (OSError, subprocess.CalledProcessError):
        return str(tree)


def check_tree(tree: Path) -> str | None:
    """Why the tree cannot be measured, or None; warns when no C extension is built."""
    if not (tree / "metrics_service").is_dir():
        return f"{tree} has no metrics_service package"
    try:
        found = package_dir(tree)
    except subprocess.CalledProcessError as exc:
        return f"{tree}: importing metrics_service failed: {exc.stderr.strip()[-500:]}"
    if found != (tree / "metrics_service").resolve():
        return f"a server in {tree} would import {found}, not {tree}'s own package"
    if not any((tree / "metrics_service").rglob("*.so")):
        log(
            f"warning: no C extension built in {tree}: "
            "`python setup.py build_ext --inplace` there, or it is measured without it"
        )
    return None


def table(figures: list[Figure], labels: list[str]) -> str:
    base, others = labels[0], labels[1:]
    head = ["figure", *labels, *(f"{label}/{base}" for label in others), "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(figures, key=lambda figure: figure.name.split(".", 1)[0])
    for figure in order:
        cells = [figure.cells.get(label, "") for label in labels]
        ratios = [ratio_cell(figure.ratios.get(label)) for label in others]
        lines.append(
            "| " + " | ".join([figure.name, *cells, *ratios, figure.target]) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf.sidebyside",
        description="Every bench figure for two or more source trees, side by side.",
    )
    parser.add_argument(
        "trees",
        nargs="+",
        type=Path,
        metavar="TREE",
        help="the base tree first, then the others (default for a second: this one)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = [name for name in args.sections.split(",") if name]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    paths = [tree.resolve() for tree in args.trees]
    if len(paths) == 1:
        paths.append(ROOT)
    if len(set(paths)) < len(paths):
        parser.error("the trees must differ: for an A/A run add a second worktree")
    for tree in paths:
        problem = check_tree(tree)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    labels = labels_for(len(paths))
    trees = dict(zip(labels, paths, strict=True))

    # The harness itself (and the wait-for client) stays off the servers' core.
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    began = time.monotonic()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="metrics-sidebyside-") as tmp:
        for name in chosen:
            log(f"section {name}")
            try:
                figures += SECTIONS[name](Path(tmp), trees)
            except Exception as exc:  # report, never fail: the table is the output
                log(f"section {name} failed: {exc!r}")
                failed = Figure(f"{name} section", "")
                failed.cells[labels[0]] = f"n/a ({type(exc).__name__}: {exc})"
                figures.append(failed)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Side by side, measured {when} on {machine()}; servers on CPU 0 (taskset), "
        "wrk and the harness on CPU 1."
    )
    for label, tree in trees.items():
        print(f"- {label}: {describe_tree(tree)}")
    how = {
        "ingest": f"Ingest (1-3): {ROUNDS} rounds of {SECONDS:g} s turns: the ceiling "
        "alone, then the ceiling and each tree's service at once on the shared core, "
        "single-event and batch; rates per second of each server's own CPU time, ≈: "
        "estimated alone as ratio to the ceiling x the ceiling alone. fsync (7): "
        f"{ROUNDS} rounds, one server at a time.",
        "ring": f"Replay and RSS (5, 6): {REPLAYS} rounds of the trees' start-ups at "
        "once, replay by the servers' CPU time. "
        f"Snapshot (4): {ROUNDS} rounds of max(2, {SECONDS:g} / 2) s.",
        "wait": f"Wait-for (8): {WAKEUPS} samples per tree.",
    }
    print(
        "\n"
        + " ".join(how[name] for name in chosen)
        + " Trees alternate; ratios of runs made together are medians of the rounds' "
        "ratios. In the ratio columns above 1 is better for 1-3, 6, 7 and worse for 4, "
        f"5, 8. ✗: target missed. {time.monotonic() - began:.0f} s in all.\n"
    )
    print(table(figures, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
