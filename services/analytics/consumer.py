"""The consumer that keeps analytics' store up to date from the bus.

It reads four topics: impressions (the gateway's recommendation answers as shown), the
members' events (clicks, carts, purchases, refunds), campaign exposures (offers shown or
sent, members held out) and the members topic (erasures, links). None is ordered with
another, which the store's attribution and campaign figures allow for.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from services.analytics.campaigns import exposure_problem
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import AnalyticsStore
from services.common.bus import (
    EVENTS_TOPIC,
    EXPOSURES_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
    Record,
)
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.exposures import Exposure, read_exposure

TOPICS = (MEMBERS_TOPIC, EVENTS_TOPIC, IMPRESSIONS_TOPIC, EXPOSURES_TOPIC)


def analytics_worker(
    bus: EventBus, store: AnalyticsStore, settings: AnalyticsSettings
) -> BusWorker:
    """A consumer group member applying each polled batch to `store`: members-topic commands
    first (an erasure or a link polled with events or exposures applies to them too), then
    the events and the exposures. Undecodable records are dead-lettered; an unreachable
    store pauses the worker (services/common/consuming.py)."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        # The shared decoder does not know exposures (it dead-letters unknown topics).
        exposures, unusable = read_exposures([r for r in records if r.topic == EXPOSURES_TOPIC])
        decoded = decode([r for r in records if r.topic != EXPOSURES_TOPIC])
        if decoded.commands:
            store.apply_commands(decoded.commands)
        if decoded.events:
            store.apply_events(decoded.events)
        if exposures:
            store.apply_exposures(exposures)
        return [*decoded.dead, *unusable]

    return BusWorker(bus, settings.consumer_group, list(TOPICS), handle)


def read_exposures(records: Sequence[Record]) -> tuple[list[Exposure], list[DeadLetter]]:
    """The exposures of the records, and the records that are none (or name ids the store
    cannot hold) as dead letters with the reason."""
    exposures: list[Exposure] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            exposure = read_exposure(record.value)
        except msgspec.DecodeError as exc:  # ValidationError is one too
            dead.append(DeadLetter(record, f"unreadable exposure: {exc}"))
            continue
        problem = exposure_problem(exposure)
        if problem:
            dead.append(DeadLetter(record, f"unusable exposure: {problem}"))
        else:
            exposures.append(exposure)
    return exposures, dead
