"""Fixtures for a test module with a collector process of its own (conftest's
`shared_collector`) rather than the session's.

Each is registered under the name its tests ask for (`collector`, `site`), which
conftest's `collector` already has: a module takes one by assigning it to that name,
`collector = module_fixtures.emptied_collector`, and pytest finds it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from . import sdks

if TYPE_CHECKING:
    from .conftest import Collector


@pytest.fixture(name="collector")
def emptied_collector(shared_collector: Collector) -> Collector:
    """The module's collector, emptied (ring and rejected list; seqs go on)."""
    cleared = httpx.delete(shared_collector.url + "/api/metrics/behavior")
    assert cleared.status_code == 200, cleared.text
    return shared_collector


@pytest.fixture(name="collector")
def unemptied_collector(shared_collector: Collector) -> Collector:
    """The module's collector as it is: every test isolates itself by the visitor id
    the SDK made up in a fresh context."""
    return shared_collector


@pytest.fixture(name="site", scope="module")
def sdk_site(shared_collector: Collector) -> Iterator[str]:
    """The SDKs' demo site (e2e/sdks.py), sending to the module's collector."""
    with sdks.demo_site(shared_collector.url) as url:
        yield url
