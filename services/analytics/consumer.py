"""The consumer that keeps analytics' store up to date from the bus.

It reads three topics: impressions (the gateway's recommendation answers as shown), the
members' events (clicks, carts, purchases, refunds) and the members topic (erasures, links).
The first two are not ordered with each other, which the store's attribution allows for.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.analytics.settings import AnalyticsSettings
from services.analytics.store import AnalyticsStore
from services.common.bus import EVENTS_TOPIC, IMPRESSIONS_TOPIC, MEMBERS_TOPIC, EventBus, Record
from services.common.consuming import BusWorker, DeadLetter, decode

TOPICS = (MEMBERS_TOPIC, EVENTS_TOPIC, IMPRESSIONS_TOPIC)


def analytics_worker(
    bus: EventBus, store: AnalyticsStore, settings: AnalyticsSettings
) -> BusWorker:
    """A consumer group member applying each polled batch to `store`: members-topic commands
    first (an erasure or a link polled with events applies to them too), then the events.
    Undecodable records are dead-lettered; an unreachable store pauses the worker
    (services/common/consuming.py)."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.commands:
            store.apply_commands(decoded.commands)
        if decoded.events:
            store.apply_events(decoded.events)
        return decoded.dead

    return BusWorker(bus, settings.consumer_group, list(TOPICS), handle)
