"""`metrics-service stats`: totals over the sink and its segments, one line at a time.

Memory stays constant in the file size: counts per event name, the time range and
the seq ranges are a few numbers each. Distinct visitors are counted exactly in a
set up to EXACT_VISITORS ids (~100 MB), then estimated (k minimum values, ~1.5 %).
A line's identity is (instance, seq): the seqs of each collector (METRICS_INSTANCE)
are followed apart, so merged files count their gaps and duplicates per collector.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import heapq
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from metrics_service.store.rotation import readable_segments
from metrics_service.terminal import Progress, json_printable, printable

EXACT_VISITORS = 1_000_000
SKETCH_SIZE = 4096


def default_files(sink: Path) -> list[Path]:
    """The rotated segments of `sink`, oldest first, then the sink itself."""
    files = readable_segments(sink)
    if sink.is_file():
        files.append(sink)
    return files


class DistinctCounter:
    """Exact until `limit` values, then a k-minimum-values estimate."""

    def __init__(self, limit: int = EXACT_VISITORS, k: int = SKETCH_SIZE) -> None:
        self.limit = max(limit, k)
        self.k = k
        self._exact: set[str] | None = set()
        self._heap: list[int] = []  # negated: the largest kept hash on top
        self._kept: set[int] = set()

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def add(self, value: str) -> None:
        if self._exact is not None:
            self._exact.add(value)
            if len(self._exact) > self.limit:
                values, self._exact = self._exact, None
                for old in values:
                    self._add_hash(old)
            return
        self._add_hash(value)

    def _add_hash(self, value: str) -> None:
        digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
        h = int.from_bytes(digest, "big")
        if h in self._kept:
            return
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, -h)
            self._kept.add(h)
        elif h < -self._heap[0]:
            self._kept.discard(-heapq.heappushpop(self._heap, -h))
            self._kept.add(h)

    def count(self) -> int:
        if self._exact is not None:
            return len(self._exact)
        kth = -self._heap[0]
        return round((self.k - 1) * (2**64) / (kth + 1))


class SeqRanges:
    """The seqs seen, as sorted disjoint runs: one run for a file without gaps, so
    memory grows only with the gaps and the lines out of order."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []  # inclusive
        self.events = 0
        self.duplicates = 0

    def add(self, seq: int) -> None:
        self.events += 1
        starts, ends = self.starts, self.ends
        if ends and seq == ends[-1] + 1:  # the common case: the next seq
            ends[-1] = seq
            return
        i = bisect.bisect_right(starts, seq) - 1  # the run starting at or before seq
        if i >= 0 and seq <= ends[i]:
            self.duplicates += 1
            return
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)

    @property
    def missing(self) -> int:
        """Seqs between the first and the last that no line holds."""
        if not self.starts:
            return 0
        held = sum(self.ends) - sum(self.starts) + len(self.starts)
        return self.ends[-1] - self.starts[0] + 1 - held

    def as_dict(self, instance: str | None) -> dict[str, Any]:
        return {
            "instance": instance,
            "events": self.events,
            "first_seq": self.starts[0] if self.starts else None,
            "last_seq": self.ends[-1] if self.ends else None,
            "missing_seqs": self.missing,
            "duplicate_seqs": self.duplicates,
        }


@dataclass
class Stats:
    files: list[str] = field(default_factory=list)
    events: int = 0
    malformed: int = 0
    by_event: dict[str, int] = field(default_factory=dict)
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    visitors: DistinctCounter = field(default_factory=DistinctCounter)
    errors: list[str] = field(default_factory=list)
    seqs: dict[str | None, SeqRanges] = field(default_factory=dict)

    def add(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.malformed += 1
            return
        event = obj.get("event") if isinstance(obj, dict) else None
        if not isinstance(event, str):
            self.malformed += 1
            return
        self.events += 1
        self.by_event[event] = self.by_event.get(event, 0) + 1
        visitor = obj.get("visitor_id")
        if isinstance(visitor, str):
            self.visitors.add(visitor)
        stamp = obj.get("timestamp")
        # Stored times share one UTC format, so text order is time order.
        if isinstance(stamp, str):
            if self.first_timestamp is None or stamp < self.first_timestamp:
                self.first_timestamp = stamp
            if self.last_timestamp is None or stamp > self.last_timestamp:
                self.last_timestamp = stamp
        seq = obj.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if self.first_seq is None or seq < self.first_seq:
                self.first_seq = seq
            if self.last_seq is None or seq > self.last_seq:
                self.last_seq = seq
            instance = obj.get("instance")
            if not isinstance(instance, str):
                instance = None
            ranges = self.seqs.get(instance)
            if ranges is None:
                ranges = self.seqs[instance] = SeqRanges()
            ranges.add(seq)

    def as_dict(self) -> dict[str, Any]:
        ranked = sorted(self.by_event.items(), key=lambda item: (-item[1], item[0]))
        # Lines without an instance first, then by name.
        names = sorted(self.seqs, key=lambda name: (name is not None, name or ""))
        instances = [self.seqs[name].as_dict(name) for name in names]
        return {
            "files": self.files,
            "events": self.events,
            "malformed_lines": self.malformed,
            "distinct_visitors": self.visitors.count(),
            "distinct_visitors_exact": self.visitors.exact,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "missing_seqs": sum(item["missing_seqs"] for item in instances),
            "duplicate_seqs": sum(item["duplicate_seqs"] for item in instances),
            "instances": instances,
            "by_event": [{"event": name, "count": n} for name, n in ranked],
            "errors": self.errors,
        }


def read_lines(path: Path, progress: Progress, offset: int) -> Iterator[bytes]:
    """Lines of a .jsonl or .jsonl.gz file; reports (compressed) bytes read."""
    with open(path, "rb") as raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                for count, line in enumerate(unzipped, 1):
                    yield line
                    if count % 4096 == 0:
                        progress.update(offset + raw.tell())
            return
        for count, line in enumerate(raw, 1):
            yield line
            if count % 4096 == 0:
                progress.update(offset + raw.tell())


def collect(paths: Iterable[Path], stream: IO[str] | None = None) -> Stats:
    """Stats over `paths`; a file that cannot be read to its end is noted in `errors`."""
    files = list(paths)
    sizes = [p.stat().st_size for p in files]
    progress = Progress(sum(sizes), stream)
    stats = Stats(files=[str(p) for p in files])
    offset = 0
    try:
        for path, size in zip(files, sizes, strict=True):
            try:
                for line in read_lines(path, progress, offset):
                    if line.endswith(b"\n"):
                        stats.add(line)
                    else:
                        stats.malformed += 1  # a torn last line
            except (EOFError, OSError) as exc:
                stats.errors.append(f"{path}: {exc}")
            offset += size
    finally:
        progress.close()
    return stats


def render(stats: Stats) -> str:
    data = stats.as_dict()
    visitors = f"{data['distinct_visitors']:,}"
    if not data["distinct_visitors_exact"]:
        visitors = "~" + visitors
    rows = [
        ("files", str(len(data["files"]))),
        ("events", f"{data['events']:,}"),
        ("malformed lines", f"{data['malformed_lines']:,}"),
        ("distinct visitors", visitors),
        ("first timestamp", printable(data["first_timestamp"] or "-")),
        ("last timestamp", printable(data["last_timestamp"] or "-")),
        ("seq range", _range(data["first_seq"], data["last_seq"])),
        ("missing seqs", f"{data['missing_seqs']:,}"),
        ("duplicate seqs", f"{data['duplicate_seqs']:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    out = [f"{name:<{width}}  {value}" for name, value in rows]
    instances = data["instances"]
    if any(item["instance"] is not None for item in instances):
        out += ["", *_instance_table(instances)]
    if data["by_event"]:
        shown = [(printable(r["event"]), r["count"]) for r in data["by_event"]]
        names = max(len("event"), *(len(name) for name, _ in shown))
        out += ["", f"{'event':<{names}}  {'count':>10}"]
        out += [f"{name:<{names}}  {count:>10,}" for name, count in shown]
    return "\n".join(out)


def _instance_table(instances: list[dict[str, Any]]) -> list[str]:
    """Each collector's events and seqs; `-` for lines written without a name."""
    header = ("instance", "events", "seq range", "missing", "duplicates")
    rows = [
        (
            printable(item["instance"] or "-"),
            f"{item['events']:,}",
            _range(item["first_seq"], item["last_seq"]),
            f"{item['missing_seqs']:,}",
            f"{item['duplicate_seqs']:,}",
        )
        for item in instances
    ]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(5)]
    return [
        "  ".join(
            cell.ljust(width) if k == 0 else cell.rjust(width)
            for k, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def _range(first: int | None, last: int | None) -> str:
    return "-" if first is None else f"{first} … {last}"


def add_parser(commands: Any) -> None:
    """Register `stats` on the CLI's subparsers."""
    parser = commands.add_parser(
        "stats", help="totals over the sink and its rotated segments"
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="JSONL or .jsonl.gz files (default: METRICS_JSONL and its segments)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: Any) -> int:
    from metrics_service.settings import Config, ConfigError

    files: list[Path] = list(args.files)
    if not files:
        try:
            sink = Config.from_env().jsonl
        except ConfigError as exc:
            print(f"metrics-service: error: {exc}", file=sys.stderr)
            return 2
        files = default_files(sink)
        if not files:
            print(f"metrics-service: error: no data at {sink}", file=sys.stderr)
            return 2
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(
            f"metrics-service: error: no such file: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    stats = collect(files)
    for problem in stats.errors:
        print(f"metrics-service: warning: {printable(problem)}", file=sys.stderr)
    if args.json:
        text = orjson.dumps(stats.as_dict(), option=orjson.OPT_INDENT_2).decode()
        text = json_printable(text)
    else:
        text = render(stats)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `metrics-service stats | head`: quiet, as Python advises
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
