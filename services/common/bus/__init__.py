"""The event bus, chosen by settings (see base.py for the model)."""

from __future__ import annotations

from services.common.bus.base import (
    CATALOG_TOPIC,
    DEAD_LETTERS_TOPIC,
    EVENTS_TOPIC,
    BusError,
    Consumer,
    EventBus,
    Message,
    Record,
)
from services.common.settings import FleetSettings

ALL_TOPICS = (EVENTS_TOPIC, CATALOG_TOPIC, DEAD_LETTERS_TOPIC)


def open_bus(fleet: FleetSettings) -> EventBus:
    """Open the bus the settings name, with every fleet topic present."""
    from services.common.bus.local_log import LocalLogBus

    bus = LocalLogBus(
        fleet.data_dir / "bus", partitions=fleet.bus_partitions, fsync=fleet.bus_fsync
    )
    bus.ensure_topics(ALL_TOPICS)
    return bus


__all__ = [
    "ALL_TOPICS",
    "CATALOG_TOPIC",
    "DEAD_LETTERS_TOPIC",
    "EVENTS_TOPIC",
    "BusError",
    "Consumer",
    "EventBus",
    "Message",
    "Record",
    "open_bus",
]
