"""The event bus, chosen by settings (see base.py for the model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.bus.base import (
    CAMPAIGN_MESSAGES_TOPIC,
    CATALOG_TOPIC,
    DEAD_LETTERS_TOPIC,
    EVENTS_TOPIC,
    EXPOSURES_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    BusError,
    Consumer,
    EventBus,
    Message,
    Record,
)
from services.common.settings import FleetSettings

if TYPE_CHECKING:
    from services.common.bus.kafka import KafkaSettings

ALL_TOPICS = (
    EVENTS_TOPIC,
    CATALOG_TOPIC,
    DEAD_LETTERS_TOPIC,
    MEMBERS_TOPIC,
    IMPRESSIONS_TOPIC,
    EXPOSURES_TOPIC,
    CAMPAIGN_MESSAGES_TOPIC,
)


def open_bus(fleet: FleetSettings, kafka: KafkaSettings | None = None) -> EventBus:
    """Open the bus the settings name, with every fleet topic present.

    With `fleet.bus == "kafka"` the cluster settings are `kafka`, or else read from the
    environment (RECOFLEET_KAFKA_*) here, the one place that picks the implementation.
    """
    bus: EventBus
    retention_s = fleet.bus_retention_hours * 3600
    if fleet.bus == "kafka":
        # Imported here so that processes on the local bus never load kafka-python.
        from services.common.bus import kafka as kafka_bus

        bus = kafka_bus.KafkaBus(
            kafka if kafka is not None else kafka_bus.KafkaSettings(), retention_s=retention_s
        )
    else:
        from services.common.bus.local_log import DEFAULT_SEGMENT_ROLL_S, LocalLogBus

        # The log keeps a record up to a roll interval past its retention, and stores must
        # still know its event id until then to recognise it when it is delivered again.
        remembered_longer_s = (fleet.processed_retention_hours - fleet.bus_retention_hours) * 3600
        bus = LocalLogBus(
            fleet.data_dir / "bus",
            partitions=fleet.bus_partitions,
            fsync=fleet.bus_fsync,
            retention_s=retention_s,
            segment_roll_s=min(DEFAULT_SEGMENT_ROLL_S, retention_s, remembered_longer_s),
        )
    try:
        bus.ensure_topics(ALL_TOPICS)
    except BaseException:
        bus.close()
        raise
    return bus


__all__ = [
    "ALL_TOPICS",
    "CAMPAIGN_MESSAGES_TOPIC",
    "CATALOG_TOPIC",
    "DEAD_LETTERS_TOPIC",
    "EVENTS_TOPIC",
    "EXPOSURES_TOPIC",
    "IMPRESSIONS_TOPIC",
    "MEMBERS_TOPIC",
    "BusError",
    "Consumer",
    "EventBus",
    "Message",
    "Record",
    "open_bus",
]
