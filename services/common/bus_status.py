"""What an operator watches on the bus: how far behind each consumer group is, and how many
dead letters wait for a person.

Read from the bus itself (the local log's commit files, or the Kafka cluster's groups and
offsets), so it counts every replica of every service, wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.bus import ALL_TOPICS, BusError, EventBus
from services.common.dead_letters import LIST_GROUP, REPLAY_GROUP, waiting


@dataclass(frozen=True)
class ConsumerLag:
    group: str
    topic: str
    # Records on the topic the group has not committed yet, over every partition.
    lag: int


@dataclass(frozen=True)
class BusStatus:
    consumers: list[ConsumerLag]
    dead_letters: int
    location: str
    # Why the groups could not be listed (a cluster without ListGroups); None when they were.
    consumers_unknown: str | None = None


# The dead-letter tools read the dead-letter topic for a person: not consumers to watch
# (the replay group's lag is the dead letters waiting, counted on their own).
TOOL_GROUPS = frozenset({LIST_GROUP, REPLAY_GROUP})


def bus_status(bus: EventBus) -> BusStatus:
    """The lag of every group on the fleet's topics, and the dead letters waiting. Raises
    BusError when the bus cannot be read at all."""
    dead_letters = waiting(bus)
    try:
        groups = bus.groups()
    except BusError as exc:
        return BusStatus([], dead_letters, bus.location(), consumers_unknown=str(exc))
    consumers = [
        ConsumerLag(group, topic, bus.lag(group, topic))
        for group, topics in sorted(groups.items())
        if group not in TOOL_GROUPS
        # A Kafka cluster may serve other applications' groups and topics too.
        for topic in topics
        if topic in ALL_TOPICS
    ]
    return BusStatus(consumers, dead_letters, bus.location())
