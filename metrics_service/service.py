from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import PackageNotFoundError, version

import orjson

from metrics_service.ingest.policy import Policy
from metrics_service.read.hub import Hub
from metrics_service.settings import Config
from metrics_service.store import replay, tail
from metrics_service.store.chunk import repacked
from metrics_service.store.quarantine import quarantine_for
from metrics_service.store.ring import Ring
from metrics_service.store.rotation import Rotator
from metrics_service.store.sink import Sink
from metrics_service.store.writer import Writer

logger = logging.getLogger("metrics_service")

# A seq beyond this at start-up can only be a corrupt line (no sink holds 2**53
# events); JSON readers that use doubles (jq, JavaScript) would not read it exactly.
SEQ_LIMIT = 2**53

try:
    VERSION = version("metrics-service")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"


class Service:
    """Everything one running collector owns; the app's lifespan starts and stops it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy.from_config(config)  # loads the taxonomy: fail at start-up
        self.ring = Ring(config.ring_capacity)
        self.rotator = Rotator(config.jsonl, config.rotate_bytes, config.rotate_keep)
        self.sink = Sink(config.jsonl, rotator=self.rotator)
        self.writer = Writer(
            self.ring,
            self.sink,
            fsync=config.fsync,
            fsync_interval=config.fsync_interval,
            dedupe_window=config.dedupe_window,
            instance=config.instance,
        )
        # Rejections by HTTP status (errors.py counts them) and sampled-out events,
        # both for GET /metrics.
        self.rejected: dict[int, int] = {}
        self.quarantine = quarantine_for(config)  # a bad file stops start-up
        # the waiters and stream subscribers
        self.hub = Hub(
            self.writer, limit=config.max_waiters, quarantine=self.quarantine
        )
        self.sampled_out = 0
        self.file_json = orjson.dumps(str(config.jsonl))  # in every ingest answer

    def start(self) -> None:
        """Repair a torn tail, open the sink, and replay the newest events into the ring."""
        config = self.config
        started = time.perf_counter()
        torn = tail.repair_torn_tail(config.jsonl)
        self.sink.open()
        count = config.ring_capacity if config.replay else 0
        found = replay.load(config.jsonl, count)
        self._report_replay(found, count, torn, time.perf_counter() - started)
        # A lifespan run again on the same app (as ASGI test clients do) starts
        # over from the file, the one source of truth.
        self.ring.clear()
        self.ring.load(found.parts)
        self.hub = Hub(
            self.writer, limit=config.max_waiters, quarantine=self.quarantine
        )
        self.quarantine.start()
        self.writer.last_seq = found.last_seq
        self.writer.blocked = None
        if found.last_seq > SEQ_LIMIT:
            where = replay.find_seq(config.jsonl, found.last_seq)
            reason = (
                f"{where} holds seq {found.last_seq}, beyond {SEQ_LIMIT} (2**53): a"
                " corrupt or hand-edited line; no event is stored until it is removed"
                " and the service restarted"
            )
            logger.error("%s", reason)
            self.writer.block(reason)
        try:
            self.writer.loop = asyncio.get_running_loop()
        except RuntimeError:  # started outside a loop: the writer looks it up
            self.writer.loop = None
        # Only the window's worth: a set never shrinks its table after discards.
        ids = self.ring.event_ids(max(config.dedupe_window, 1))
        # Replay's line strings are freed before the ring compacts and the
        # ids are copied, or the survivors would pin the freed memory (RSS).
        del found
        ids = repacked(ids)
        self.ring.compact()
        self.writer.dedupe.remember(ids)
        self.rotator.resume()

    def _report_replay(
        self, found: replay.Loaded, count: int, torn: int, seconds: float
    ) -> None:
        """One line: what start-up read back, from where, in how long, what it skipped."""
        config = self.config
        events = sum(len(part.seqs) for part in found.parts)
        files = [str(config.jsonl)] + [str(s) for s in found.segments]
        skipped = []
        if torn:
            skipped.append(f"a torn last line of {torn} bytes (moved to .torn)")
        if found.skipped:
            where = replay.skipped_lines(config.jsonl, max(count, 1))
            shown = f" (newest: {'; '.join(where)})" if where else ""
            skipped.append(f"{found.skipped} unreadable lines{shown}")
        logger.log(
            logging.WARNING if found.skipped or torn else logging.INFO,
            "replayed %d events from %s in %.2f s, last seq %d; skipped %s",
            events,
            ", ".join(files),
            seconds,
            found.last_seq,
            ", ".join(skipped) or "nothing",
        )

    async def stop(self) -> None:
        self.hub.close()
        await self.writer.close()
        self.writer.loop = None
        self.quarantine.close()
        await asyncio.to_thread(self.rotator.wait, 30)
        if self.quarantine.rotator is not None:
            await asyncio.to_thread(self.quarantine.rotator.wait, 30)
        logger.info("closed %s after seq %d", self.config.jsonl, self.writer.last_seq)
