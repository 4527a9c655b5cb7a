"""Fixtures that run the EventBus conformance suite against every bus implementation.

To add an implementation, write a factory maker like `_local_buses` and add it to
`BUS_IMPLEMENTATIONS`; every test in this package then runs against it too. A maker gets
the test's request (to use other fixtures, e.g. a broker for the session) and tmp_path.

The Kafka bus runs against librdkafka's mock cluster (tests/kafka_mock.py), one for the
session; the tests use unique topic and group names, so they do not see each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.bus.base import EventBus
from services.common.bus.kafka import KafkaBus, KafkaSettings
from services.common.bus.local_log import LocalLogBus
from tests.kafka_mock import kafka_cluster

BusFactory = Callable[[], EventBus]


def _local_buses(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    """New LocalLogBus objects over one directory: a new object is a restarted process."""
    root = tmp_path / "bus"
    return lambda: LocalLogBus(root, partitions=4)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker RECOFLEET_TEST_KAFKA_BOOTSTRAP names, else a mock Kafka cluster for the
    whole session (started only if a Kafka test runs)."""
    with kafka_cluster() as bootstrap:
        yield bootstrap


def _kafka_buses(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    """New KafkaBus objects on one cluster: a new object is a restarted process."""
    settings = KafkaSettings(
        bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
        client_id="conformance",
        partitions=4,
        replication_factor=1,
        linger_ms=5,
        # The shortest session a stock broker accepts (group.min.session.timeout.ms), so a
        # member that vanishes without leaving hands its partitions on within 6 s.
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=10_000,
        request_timeout_ms=10_000,
    )
    return lambda: KafkaBus(settings)


BUS_IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], BusFactory]] = {
    "kafka": _kafka_buses,
    "local": _local_buses,
}


@pytest.fixture(params=sorted(BUS_IMPLEMENTATIONS))
def bus_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusFactory]:
    """Makes bus clients that share one storage/cluster; all are closed after the test."""
    make = BUS_IMPLEMENTATIONS[request.param](request, tmp_path)
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
