"""Fixtures that run the EventBus conformance suite against every bus implementation.

To add an implementation, write a factory maker like `_local_buses` and add it to
`BUS_IMPLEMENTATIONS`; every test in this package then runs against it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.bus.base import EventBus
from services.common.bus.local_log import LocalLogBus

BusFactory = Callable[[], EventBus]


def _local_buses(tmp_path: Path) -> BusFactory:
    """New LocalLogBus objects over one directory: a new object is a restarted process."""
    root = tmp_path / "bus"
    return lambda: LocalLogBus(root, partitions=4)


BUS_IMPLEMENTATIONS: dict[str, Callable[[Path], BusFactory]] = {
    "local": _local_buses,
}


@pytest.fixture(params=sorted(BUS_IMPLEMENTATIONS))
def bus_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusFactory]:
    """Makes bus clients that share one storage/cluster; all are closed after the test."""
    make = BUS_IMPLEMENTATIONS[request.param](tmp_path)
    made: list[EventBus] = []

    def factory() -> EventBus:
        made.append(make())
        return made[-1]

    yield factory
    for bus in reversed(made):
        bus.close()


@pytest.fixture
def bus(bus_factory: BusFactory) -> EventBus:
    return bus_factory()


@pytest.fixture
def topic() -> str:
    # Unique names keep tests independent on a shared broker (e.g. a Kafka cluster).
    return f"conformance.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"
