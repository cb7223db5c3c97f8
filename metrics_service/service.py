from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from . import recovery
from .buffer import Ring
from .collector import Collector
from .config import Config
from .policy import Policy
from .rotation import Rotator
from .sink import Sink

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
        self.collector = Collector(
            self.ring,
            self.sink,
            fsync=config.fsync,
            fsync_interval=config.fsync_interval,
            dedupe_window=config.dedupe_window,
        )
        # Rejections by HTTP status (errors.py counts them) and sampled-out events,
        # both for GET /metrics.
        self.rejected: dict[int, int] = {}
        self.sampled_out = 0

    def start(self) -> None:
        """Repair a torn tail, open the sink, and replay the newest events into the ring."""
        config = self.config
        recovery.repair_torn_tail(config.jsonl)
        self.sink.open()
        found = recovery.replay(
            config.jsonl, config.ring_capacity if config.replay else 0
        )
        self.ring.extend(found.entries)
        # Only the window's worth: a set never shrinks its table after discards.
        recent = found.entries[-max(config.dedupe_window, 1) :]
        self.collector.remember([e.event_id for e in recent if e.event_id])
        self.collector.last_seq = found.last_seq
        del found, recent  # replay's tuples must be freed before the ring compacts
        self.ring.compact()
        self.rotator.resume()

    async def stop(self) -> None:
        await self.collector.close()
        await asyncio.to_thread(self.rotator.wait, 30)
