"""`metrics-service export --parquet`: stored lines into one Parquet file, via DuckDB.

DuckDB is the optional `parquet` extra: it is imported only when an export runs, and
its absence is told with the command that installs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from metrics_service.settings import Config, ConfigError
from metrics_service.stats import default_files
from metrics_service.store.line import KEYS
from metrics_service.terminal import Progress, printable

# A column per key of the stored line, in its order; a key a line lacks (an older
# file, an optional key) is NULL. Times are instants in UTC; metadata stays JSON text.
TYPES = {
    "seq": "UBIGINT",
    "received_at": "TIMESTAMPTZ",
    "timestamp": "TIMESTAMPTZ",
    "metadata": "JSON",
}
COLUMNS = {key: TYPES.get(key, "VARCHAR") for key in KEYS}

INSTALL = "pip install 'metrics-service[parquet]'"


class ExportError(Exception):
    """An export that cannot run or failed; the message says why."""


def load_duckdb() -> Any:
    try:
        import duckdb
    except ModuleNotFoundError as exc:
        raise ExportError(
            f"export --parquet needs DuckDB, which is not installed; install it "
            f"with: {INSTALL}"
        ) from exc
    return duckdb


def to_parquet(files: Sequence[Path], out: Path, stream: IO[str] | None = None) -> int:
    """Write every event of `files` (.jsonl or .jsonl.gz, in the order given) to
    `out`; returns how many. Lines that are not events (a torn fragment) are left out.
    `out` appears whole or not at all."""
    duckdb = load_duckdb()
    partial = out.with_name(f".{out.name}.partial")
    progress = Progress(sum(p.stat().st_size for p in files), stream)
    con = duckdb.connect()
    try:
        if progress.enabled:
            con.execute(
                "SET enable_progress_bar = true;"
                "SET enable_progress_bar_print = false;"
                "SET progress_bar_time = 0"
            )
        query = (
            "COPY (SELECT * FROM read_json($files, format = 'newline_delimited',"
            " columns = $columns, ignore_errors = true) WHERE event IS NOT NULL)"
            f" TO {_quote(str(partial))} (FORMAT parquet, COMPRESSION zstd)"
        )
        params = {"files": [str(p) for p in files], "columns": COLUMNS}
        with polling(con, progress):
            [(count,)] = con.execute(query, params).fetchall()
        os.replace(partial, out)
    except duckdb.Error as exc:
        raise ExportError(str(exc)) from exc
    finally:
        con.close()
        progress.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return int(count)


@contextlib.contextmanager
def polling(con: Any, progress: Progress, every: float = 0.1) -> Iterator[None]:
    """Feed DuckDB's own progress (a percentage) to the bar while the query runs."""
    if not progress.enabled:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every):
            share = con.query_progress()
            if share >= 0:
                progress.update(int(progress.total * share / 100))

    worker = threading.Thread(target=poll, name="metrics-export-progress", daemon=True)
    worker.start()
    try:
        yield
    finally:
        done.set()
        worker.join()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def add_parser(commands: Any) -> None:
    """Register `export` on the CLI's subparsers."""
    parser = commands.add_parser(
        "export",
        help="write the sink and its segments to a Parquet file (DuckDB)",
        description=(
            "Write stored events to one Parquet file, a column per key of the "
            f"stored line. Needs DuckDB: {INSTALL}"
        ),
    )
    parser.add_argument(
        "--parquet",
        type=Path,
        required=True,
        metavar="OUT",
        help="the Parquet file to write (replaced if it exists)",
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="JSONL or .jsonl.gz files (default: METRICS_JSONL and its segments)",
    )


def run(args: Any) -> int:
    files: list[Path] = list(args.files)
    if not files:
        try:
            sink = Config.from_env().jsonl
        except ConfigError as exc:
            return _fail(str(exc))
        files = default_files(sink)
        if not files:
            return _fail(f"no data at {sink}")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        return _fail(f"no such file: {', '.join(missing)}")
    out: Path = args.parquet
    if not out.parent.is_dir():
        return _fail(f"--parquet: no such folder: {out.parent}")
    try:
        count = to_parquet(files, out)
    except ExportError as exc:
        return _fail(printable(str(exc)))
    noun = "file" if len(files) == 1 else "files"
    print(f"exported {count:,} events from {len(files)} {noun} to {out}")
    return 0


def _fail(message: str) -> int:
    print(f"metrics-service: error: {message}", file=sys.stderr)
    return 2
