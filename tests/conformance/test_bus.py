"""What any EventBus must do, as a service using it would notice."""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict

import pytest

from services.common.bus.base import BusError, Consumer, EventBus, Message, Record

from .conftest import BusFactory

pytestmark = pytest.mark.timeout(60)

KEYS = [f"member-{i}" for i in range(12)]


def _messages(count: int, keys: list[str] = KEYS, tag: str = "") -> list[Message]:
    """`count` messages spread over `keys`, each value naming its key and sequence number."""
    return [
        Message(key=keys[i % len(keys)], value=f"{tag}{keys[i % len(keys)]}:{i}".encode())
        for i in range(count)
    ]


def _drain(consumer: Consumer, count: int, deadline_s: float = 15.0) -> list[Record]:
    """Poll until `count` records arrived (or the deadline passed)."""
    records: list[Record] = []
    deadline = time.monotonic() + deadline_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(max_records=min(100, count - len(records)), timeout_s=0.2))
    return records


def _drain_exactly(consumer: Consumer, count: int) -> list[Record]:
    """Poll `count` records and check nothing more is delivered."""
    records = _drain(consumer, count)
    assert len(records) == count
    assert consumer.poll(timeout_s=0.3) == []
    return records


def _by_key(records: list[Record]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for record in records:
        grouped[record.key].append(record.value)
    return dict(grouped)


def _pairs(items: list[Message] | list[Record]) -> set[tuple[str, bytes]]:
    return {(item.key, item.value) for item in items}


def test_consumer_gets_what_was_published_in_order_per_key(
    bus: EventBus, topic: str, group: str
) -> None:
    sent = _messages(300)
    bus.publish(topic, sent[:100])
    bus.publish(topic, sent[100:])

    with bus.consumer(group, [topic]) as consumer:
        got = _drain_exactly(consumer, len(sent))

    assert _by_key(got) == _by_key([Record(topic, 0, 0, m.key, m.value, 0) for m in sent])
    assert {r.topic for r in got} == {topic}
    assert all(r.timestamp_ms > 0 for r in got)


def test_one_key_always_lands_on_one_partition_in_offset_order(
    bus: EventBus, topic: str, group: str
) -> None:
    for batch in range(5):
        bus.publish(topic, _messages(40, tag=f"b{batch}-"))

    with bus.consumer(group, [topic]) as consumer:
        got = _drain_exactly(consumer, 200)

    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    offsets: dict[int, list[int]] = defaultdict(list)
    for record in got:
        partitions_of_key[record.key].add(record.partition)
        offsets[record.partition].append(record.offset)
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    for partition_offsets in offsets.values():
        assert partition_offsets == sorted(set(partition_offsets))


def test_each_group_sees_every_record(bus: EventBus, topic: str) -> None:
    sent = _messages(120)
    bus.publish(topic, sent)

    with bus.consumer("profiles", [topic]) as a, bus.consumer("campaigns", [topic]) as b:
        got_a = _drain_exactly(a, len(sent))
        got_b = _drain_exactly(b, len(sent))

    assert _pairs(got_a) == _pairs(sent) == _pairs(got_b)


def test_consumer_reads_several_topics(bus: EventBus, topic: str, group: str) -> None:
    other = f"{topic}-other"
    bus.publish(topic, _messages(10, tag="a-"))
    bus.publish(other, _messages(10, tag="b-"))

    with bus.consumer(group, [topic, other]) as consumer:
        got = _drain_exactly(consumer, 20)

    assert {r.topic for r in got} == {topic, other}


def test_new_group_starts_at_the_earliest_record_with_nothing_committed(
    bus: EventBus, topic: str, group: str
) -> None:
    bus.publish(topic, _messages(20))

    assert all(offset == 0 for offset in bus.committed(group, topic).values())
    assert sum(bus.end_offsets(topic).values()) == 20
    with bus.consumer(group, [topic]) as consumer:
        assert len(_drain_exactly(consumer, 20)) == 20


def test_committed_records_are_not_redelivered_after_restart(
    bus_factory: BusFactory, topic: str, group: str
) -> None:
    first, later = _messages(50, tag="first-"), _messages(30, tag="later-")
    bus = bus_factory()
    bus.publish(topic, first)
    with bus.consumer(group, [topic]) as consumer:
        _drain_exactly(consumer, len(first))
        consumer.commit()
    bus.publish(topic, later)
    bus.close()

    restarted = bus_factory()
    with restarted.consumer(group, [topic]) as consumer:
        got = _drain_exactly(consumer, len(later))

    assert _pairs(got) == _pairs(later)


def test_uncommitted_records_are_redelivered_after_restart(
    bus_factory: BusFactory, topic: str, group: str
) -> None:
    sent = _messages(60)
    bus = bus_factory()
    bus.publish(topic, sent)
    with bus.consumer(group, [topic]) as consumer:
        done = _drain(consumer, 20)
        consumer.commit()
        polled_not_committed = _drain(consumer, 10)
    assert done and polled_not_committed
    bus.close()

    restarted = bus_factory()
    with restarted.consumer(group, [topic]) as consumer:
        got = _drain_exactly(consumer, len(sent) - len(done))

    assert _pairs(got) == _pairs(sent) - _pairs(done)
    assert _pairs(polled_not_committed) <= _pairs(got)


def test_records_published_after_the_consumer_opened_are_seen(
    bus_factory: BusFactory, topic: str, group: str
) -> None:
    reader, writer = bus_factory(), bus_factory()
    writer.ensure_topics([topic])
    with reader.consumer(group, [topic]) as consumer:
        assert consumer.poll(timeout_s=0.2) == []
        for round_ in range(3):
            sent = _messages(25, tag=f"r{round_}-")
            writer.publish(topic, sent)
            assert _pairs(_drain_exactly(consumer, len(sent))) == _pairs(sent)


def test_lag_counts_uncommitted_records_and_drops_to_zero_after_commit(
    bus: EventBus, topic: str, group: str
) -> None:
    bus.publish(topic, _messages(40))
    assert bus.lag(group, topic) == 40

    with bus.consumer(group, [topic]) as consumer:
        _drain_exactly(consumer, 40)
        assert bus.lag(group, topic) == 40
        consumer.commit()
        assert bus.lag(group, topic) == 0
        bus.publish(topic, _messages(5))
        assert bus.lag(group, topic) == 5

    assert sum(bus.committed(group, topic).values()) == 40


def test_groups_name_each_group_that_committed_with_its_topics(
    bus: EventBus, topic: str, group: str
) -> None:
    other_topic, reader = f"{topic}-other", f"{group}-reader"
    bus.publish(topic, _messages(10))
    bus.publish(other_topic, _messages(4))
    with bus.consumer(group, [topic, other_topic]) as consumer:
        _drain_exactly(consumer, 14)
        consumer.commit()
    # A reader that never commits (a dead-letter listing, say) has no lag to watch.
    with bus.consumer(reader, [topic]) as consumer:
        _drain_exactly(consumer, 10)
    bus.drop_group(reader)

    try:
        found = bus.groups()
    except BusError as exc:
        # librdkafka's mock cluster has no ListGroups (brokers have since Kafka 0.9): the bus
        # says so rather than answer that no group exists.
        assert "does not list consumer groups (ListGroups)" in str(exc)
        return

    assert found[group] == sorted([topic, other_topic])
    assert reader not in found


def test_poll_with_nothing_new_returns_empty_after_about_the_timeout(
    bus: EventBus, topic: str, group: str
) -> None:
    bus.ensure_topics([topic])
    with bus.consumer(group, [topic]) as consumer:
        consumer.poll(timeout_s=0.5)  # lets a networked bus finish joining the group
        started = time.monotonic()
        assert consumer.poll(timeout_s=0.4) == []
        elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 1.5


def test_ensure_topics_is_idempotent(bus_factory: BusFactory, topic: str) -> None:
    bus = bus_factory()
    bus.ensure_topics([topic])
    partitions = set(bus.end_offsets(topic))
    assert partitions
    assert all(end == 0 for end in bus.end_offsets(topic).values())

    bus.publish(topic, _messages(10))
    bus.ensure_topics([topic, topic])
    bus_factory().ensure_topics([topic])

    assert set(bus.end_offsets(topic)) == partitions
    assert sum(bus.end_offsets(topic).values()) == 10


def test_an_open_bus_reports_healthy(bus: EventBus, topic: str) -> None:
    bus.ensure_topics([topic])
    assert bus.healthy()


def test_a_consumer_starting_on_a_backlog_of_megabytes_reads_it_without_reconnecting(
    bus: EventBus, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 6 MB over every partition, in values that do not compress: one fetch of a full
    # partition each exceeds a client's default frame limit unless the settings agree.
    rng = random.Random(7)
    sent = [
        Message(key=KEYS[i % len(KEYS)], value=rng.randbytes(3000) + str(i).encode())
        for i in range(2000)
    ]
    for start in range(0, len(sent), 200):
        bus.publish(topic, sent[start : start + 200])

    with caplog.at_level(logging.WARNING), bus.consumer(group, [topic]) as consumer:
        got = _drain(consumer, len(sent), deadline_s=40.0)

    assert len(got) == len(sent)
    assert _pairs(got) == _pairs(sent)
    assert "Invalid frame length" not in caplog.text
