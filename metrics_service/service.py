from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .buffer import Ring
from .collector import Collector
from .config import Config
from .sink import Sink

try:
    VERSION = version("metrics-service")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"


class Service:
    """Everything one running collector owns; the app's lifespan starts and stops it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ring = Ring(config.ring_capacity)
        self.sink = Sink(config.jsonl)
        self.collector = Collector(
            self.ring,
            self.sink,
            fsync=config.fsync,
            fsync_interval=config.fsync_interval,
            dedupe_window=config.dedupe_window,
        )

    def start(self) -> None:
        self.sink.open()
        self.collector.last_seq = self.sink.last_seq()

    async def stop(self) -> None:
        await self.collector.close()
