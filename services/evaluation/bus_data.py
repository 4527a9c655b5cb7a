"""`recofleet evaluate --data bus`: what the event bus still holds, as a data set.

Reads the events, catalog and members topics from the earliest record the bus keeps (its
retention decides how far back that is) with a consumer group of its own that never
commits, so no service's position moves. Members-topic commands are honoured as the
services honour them: an erased member's events from before the erasure are left out, and
a visitor linked to a member counts as that member.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from services.common.bus import (
    CATALOG_TOPIC,
    EVENTS_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
)
from services.common.consuming import decode
from services.common.events import AnyEvent, EventType
from services.common.members import Erase, Link, MemberCommand
from services.evaluation.data import Dataset, Interaction, by_time

# Impressions too: the learned ranker's training reads them with their outcomes.
TOPICS = (EVENTS_TOPIC, CATALOG_TOPIC, MEMBERS_TOPIC, IMPRESSIONS_TOPIC)


@dataclass
class _Read:
    events: list[AnyEvent] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)
    erased: dict[str, datetime] = field(default_factory=dict)  # member -> latest erasure
    links: dict[str, str] = field(default_factory=dict)  # visitor -> member
    unreadable: int = 0


def read_bus(bus: EventBus, source: str, idle_polls: int = 3) -> Dataset:
    """Every interaction on the bus (lines of purchases, carts, views, ratings...)."""
    read = _drain(bus, idle_polls)
    rows = [
        row
        for event in read.events
        if not _erased(event, read.erased)
        for row in _interactions(event, read.links.get(event.member_id, event.member_id))
    ]
    dropped = {"unreadable records": read.unreadable} if read.unreadable else {}
    erased = sum(1 for e in read.events if _erased(e, read.erased))
    if erased:
        dropped["events of erased members"] = erased
    return Dataset("event-bus", source, by_time(rows), read.categories, dropped=dropped)


def bus_events(bus: EventBus, idle_polls: int = 3) -> list[AnyEvent]:
    """Every event on the bus, oldest first, without those of erased members from before
    their erasure (what `recofleet train-ranker` learns from)."""
    read = _drain(bus, idle_polls)
    kept = [e for e in read.events if not _erased(e, read.erased)]
    return sorted(kept, key=lambda e: e.timestamp)


def _drain(bus: EventBus, idle_polls: int) -> _Read:
    ends = {t: bus.end_offsets(t) for t in TOPICS}
    seen: dict[tuple[str, int], int] = {}
    read = _Read()
    group = f"recofleet-evaluate-{uuid.uuid4().hex[:12]}"
    with bus.consumer(group, list(TOPICS)) as consumer:
        idle = 0
        while idle < idle_polls and not _caught_up(ends, seen):
            records = consumer.poll(5000, timeout_s=1.0)
            if not records:
                idle += 1
                continue
            idle = 0
            for record in records:
                seen[(record.topic, record.partition)] = record.offset + 1
            decoded = decode(records)
            read.unreadable += len(decoded.dead)
            read.events.extend(decoded.events)
            read.categories.update((i.item_id, i.category) for i in decoded.items if i.category)
            _remember(read, decoded.commands)
    bus.drop_group(group)
    return read


def _caught_up(ends: dict[str, dict[int, int]], seen: dict[tuple[str, int], int]) -> bool:
    return all(
        seen.get((topic, partition), 0) >= end
        for topic, by_partition in ends.items()
        for partition, end in by_partition.items()
        if end > 0
    )


def _remember(read: _Read, commands: Iterable[MemberCommand]) -> None:
    for command in commands:
        if isinstance(command, Erase):
            before = read.erased.get(command.member_id)
            read.erased[command.member_id] = max(command.at, before or command.at)
            for visitor in [v for v, m in read.links.items() if m == command.member_id]:
                read.erased[visitor] = read.erased[command.member_id]
        elif isinstance(command, Link):
            read.links[command.anonymous_id] = command.member_id


def _erased(event: AnyEvent, erased: dict[str, datetime]) -> bool:
    at = erased.get(event.member_id)
    return at is not None and event.timestamp < at


def _interactions(event: AnyEvent, member_id: str) -> list[Interaction]:
    basket = event.order_id or event.event_id
    kind = str(event.type)
    rated = event.type == EventType.RATE
    return [
        Interaction(
            member_id,
            line.item_id,
            event.timestamp,
            kind,
            (event.rating or 0.0) if rated else float(line.quantity),
            basket,
        )
        for line in event.lines()
    ]
