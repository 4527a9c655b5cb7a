"""What an operator sees of the bus: each group's lag per topic, the dead letters waiting."""

from __future__ import annotations

from pathlib import Path

from services.common import dead_letters
from services.common.bus import ALL_TOPICS, CATALOG_TOPIC, EVENTS_TOPIC, BusError, Message
from services.common.bus.local_log import LocalLogBus
from services.common.bus_status import ConsumerLag, bus_status
from services.common.consuming import BusWorker, decode
from services.common.events import Event
from services.common.pii import PiiScrubber
from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from services.ingestion.domain import Ingestor
from services.ingestion.servicer import IngestionServicer
from services.ingestion.settings import IngestionSettings


def _bus(tmp_path: Path) -> LocalLogBus:
    bus = LocalLogBus(tmp_path / "bus", partitions=2)
    bus.ensure_topics(ALL_TOPICS)
    return bus


def _events(*ids: str) -> list[Message]:
    return [
        Message("m-1", Event(event_id=i, type="view", member_id="m-1", item_id="sku").to_bytes())
        for i in ids
    ]


def _worker(bus: LocalLogBus, group: str) -> BusWorker:
    return BusWorker(bus, group, [EVENTS_TOPIC, CATALOG_TOPIC], lambda rs: decode(rs).dead)


def test_each_group_shows_what_it_has_not_committed_on_each_topic(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    bus.publish(CATALOG_TOPIC, [Message("sku", b'{"item_id": "sku"}')])
    bus.publish(EVENTS_TOPIC, _events("e-1", "e-2"))
    _worker(bus, "profiles").drain()
    _worker(bus, "retrieval").drain()
    bus.publish(EVENTS_TOPIC, _events("e-3"))
    _worker(bus, "retrieval").drain()
    bus.publish(EVENTS_TOPIC, _events("e-4"))

    status = bus_status(bus)

    assert status.consumers == [
        ConsumerLag("profiles", CATALOG_TOPIC, 0),
        ConsumerLag("profiles", EVENTS_TOPIC, 2),
        ConsumerLag("retrieval", CATALOG_TOPIC, 0),
        ConsumerLag("retrieval", EVENTS_TOPIC, 1),
    ]
    assert status.dead_letters == 0 and status.consumers_unknown is None
    assert str(tmp_path) in status.location


def test_dead_letters_wait_until_replayed_and_the_tools_are_no_consumers(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, [Message("m-1", b"{not an event"), Message("m-2", b"nor this")])
    _worker(bus, "profiles").drain()
    assert len(list(dead_letters.read(bus))) == 2

    assert bus_status(bus).dead_letters == 2
    dead_letters.replay(bus)
    replayed = bus_status(bus)

    assert replayed.dead_letters == 0
    assert {c.group for c in replayed.consumers} == {"profiles"}


def test_a_bus_that_cannot_list_its_groups_still_counts_the_dead_letters(tmp_path: Path) -> None:
    class Unlisting(LocalLogBus):
        def groups(self) -> dict[str, list[str]]:
            raise BusError("the Kafka cluster does not list consumer groups (ListGroups)")

    bus = Unlisting(tmp_path / "bus", partitions=2)
    bus.ensure_topics(ALL_TOPICS)
    bus.publish(dead_letters.DEAD_LETTERS_TOPIC, [Message("m-1", b"{}")])

    status = bus_status(bus)

    assert status.consumers == [] and status.dead_letters == 1
    assert status.consumers_unknown is not None and "ListGroups" in status.consumers_unknown


async def test_ingestion_answers_for_the_bus_over_grpc(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, _events("e-1", "e-2", "e-3"))
    with bus.consumer("analytics", [EVENTS_TOPIC]) as consumer:
        consumer.poll(2)
        consumer.commit()
    servicer = IngestionServicer(
        Ingestor(bus, PiiScrubber(b"bus-status-tests-secret-0123456789"), IngestionSettings())
    )

    reply = await servicer.GetBusStatus(ingestion_pb2.GetBusStatusRequest(), None)

    assert [(c.group, c.topic, c.lag) for c in reply.consumers] == [("analytics", EVENTS_TOPIC, 1)]
    assert reply.dead_letters == 0 and reply.consumers_unknown == ""
