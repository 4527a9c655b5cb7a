"""Topics the Kafka bus creates carry the fleet's retention (retention.ms).

librdkafka's mock cluster has neither CreateTopics nor DescribeConfigs (it answers
IncompatibleBrokerVersion), and it keeps records in memory without enforcing retention,
so these tests check the CreateTopics request the bus builds, as kafka-python would put it
on the wire to a real broker, and what the bus does on a broker without CreateTopics.
Retention itself is enforced by the broker; the local log's is tested in
tests/unit/test_local_log_retention.py.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.protocol.admin import CreateTopicsRequest

from services.common.bus import open_bus
from services.common.bus.base import BusError
from services.common.bus.kafka import KafkaBus, KafkaSettings
from services.common.settings import FleetSettings


def _settings(bootstrap: str = "127.0.0.1:9") -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap, partitions=6, replication_factor=1, request_timeout_ms=10_000
    )


def test_createtopics_asks_for_the_retention_on_the_wire() -> None:
    bus = KafkaBus(_settings(), retention_s=2 * 3600)
    try:
        topic = bus.new_topic("recofleet.events", replicas=1)
    finally:
        bus.close()

    # The version kafka-python 2.3 sends to Kafka 2.x and 3.x brokers.
    request = CreateTopicsRequest[3](
        create_topic_requests=[KafkaAdminClient._convert_new_topic_request(topic)],
        timeout=30_000,
        validate_only=False,
    )
    sent = request.to_object()["create_topic_requests"][0]
    assert (sent["topic"], sent["num_partitions"], sent["replication_factor"]) == (
        "recofleet.events",
        6,
        1,
    )
    assert sent["configs"] == [{"config_key": "retention.ms", "config_value": "7200000"}]
    assert b"retention.ms" in request.encode()


def test_without_a_retention_new_topics_get_the_brokers_default() -> None:
    bus = KafkaBus(_settings())
    try:
        assert bus.new_topic("t", replicas=1).topic_configs == {}
    finally:
        bus.close()
    with pytest.raises(BusError):
        KafkaBus(_settings(), retention_s=0)


class _RecordingAdmin:
    """Stands in for the admin client's CreateTopics, which the mock cluster lacks: keeps
    what the bus asked for and creates the topic the way the mock can."""

    def __init__(self, create: Any) -> None:
        self.asked: list[NewTopic] = []
        self._create = create

    def create_topics(self, new_topics: list[NewTopic], timeout_ms: int | None = None) -> None:
        self.asked.extend(new_topics)
        for topic in new_topics:
            self._create(topic.name)

    def close(self) -> None:
        pass


def test_ensure_topics_creates_missing_topics_with_the_retention(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = KafkaBus(_settings(kafka_bootstrap), retention_s=3600)
    admin = _RecordingAdmin(create=lambda name: bus._get_producer().partitions_for(name))
    monkeypatch.setattr(bus, "_get_admin", lambda: admin)
    topic = f"retention.{uuid.uuid4().hex[:12]}"
    try:
        bus.ensure_topics([topic])
        assert bus.end_offsets(topic)  # the topic exists on the cluster
        bus.ensure_topics([topic])  # and an existing topic is not asked for again
    finally:
        bus.close()
    assert [(t.name, t.topic_configs) for t in admin.asked] == [
        (topic, {"retention.ms": "3600000"})
    ]


def test_a_broker_without_createtopics_gets_its_topics_and_a_warning_about_retention(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = KafkaBus(_settings(kafka_bootstrap), retention_s=24 * 3600)
    topic = f"retention.{uuid.uuid4().hex[:12]}"
    try:
        with caplog.at_level(logging.WARNING, logger="services.common.bus.kafka"):
            bus.ensure_topics([topic])
        assert bus.end_offsets(topic)
    finally:
        bus.close()
    assert f"auto-creates {topic} with its own defaults: set retention.ms=86400000" in caplog.text


def test_open_bus_gives_the_kafka_bus_the_fleet_retention(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    fleet = FleetSettings(data_dir=tmp_path, bus="kafka", bus_retention_hours=24)
    bus = open_bus(fleet, _settings(kafka_bootstrap))
    try:
        assert isinstance(bus, KafkaBus)
        assert bus.retention_s == 24 * 3600
        assert bus.new_topic("t", replicas=1).topic_configs == {"retention.ms": "86400000"}
    finally:
        bus.close()
