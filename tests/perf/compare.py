"""Side-by-side costs: the ceiling and the service from one or more source trees, all on
SERVER_CPU at once, each loaded by its own wrk on CLIENT_CPU for the same seconds.

The scheduler gives each server an equal share of the core, so the ratio of two request
rates is the inverse ratio of their costs per request, and a slow spell of the machine hits
all of them alike: ratios vary ~2% between rounds where the interleaved bench's vary ~10%.

    python -m tests.perf.compare [TREE ...]

Each TREE is a checkout (a `git worktree`, say) whose `metrics_service` is served, with its
C extension built in place (`python setup.py build_ext --inplace` there); the default
is this one. Environment: BENCH_ROUNDS (6) rounds of BENCH_SECONDS (5).

    python -m tests.perf.compare --all BASE_TREE [NEW_TREE ...]

runs every figure of `make bench` for the trees side by side instead: see
tests/perf/sidebyside.py.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .bench import CONNECTIONS, EVENT_PATH, log, setting
from .data import EVENT_TEMPLATE
from .procs import ROOT, Server, wrk


def main(argv: list[str]) -> int:
    if "--all" in argv:
        from .sidebyside import main as all_figures

        return all_figures([arg for arg in argv if arg != "--all"])
    rounds, seconds = int(setting("ROUNDS", 6)), setting("SECONDS", 5)
    trees = [Path(tree).resolve() for tree in argv] or [ROOT]
    work = Path(tempfile.mkdtemp(prefix="compare-"))
    template = work / "event.json"
    template.write_bytes(EVENT_TEMPLATE)
    servers = [Server.ceiling(work)] + [
        Server.service(f"{n}:{tree.name}", work, work / f"{n}.jsonl", cwd=tree)
        for n, tree in enumerate(trees, 1)
    ]
    rates: dict[str, list[float]] = {server.name: [] for server in servers}

    def load(server: Server, seconds: float) -> float:
        url = server.url(EVENT_PATH)
        return wrk(url, connections=CONNECTIONS, seconds=seconds, template=template).rps

    try:
        for server in servers:
            server.start()
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: load(server, 1), servers))  # warm-up
            for round_no in range(rounds):
                rps = list(pool.map(lambda server: load(server, seconds), servers))
                shown = []
                for server, rate in zip(servers, rps, strict=True):
                    rates[server.name].append(rate)
                    shown.append(f"{server.name} {rate:,.0f}")
                log(f"round {round_no + 1}/{rounds}: {', '.join(shown)} req/s")
    finally:
        for server in servers:
            server.stop()
    ceiling = rates["ceiling"]
    print("| server | requests/s (median) | / ceiling (median of rounds) | rounds |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        ratios = [value / base for value, base in zip(values, ceiling, strict=True)]
        print(
            f"| {name} | {statistics.median(values):,.0f} | "
            f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
