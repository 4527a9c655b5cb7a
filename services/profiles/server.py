"""Entry point: `python -m services.profiles`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

import grpc

from services.common.bus import (
    CATALOG_TOPIC,
    EVENTS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
    Record,
    open_bus,
)
from services.common.clock import Clock
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.grpc_server import serve
from services.common.migrations import OutdatedSchema
from services.common.pii import pii_secret
from services.common.pruning import keep_processed_pruned
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
from services.gen.recofleet.profiles.v1 import profiles_pb2_grpc
from services.profiles.portrait import Portraitist
from services.profiles.scoring import ScoreSchedule
from services.profiles.segmenting import Segmenter
from services.profiles.servicer import ProfilesServicer
from services.profiles.settings import ProfilesSettings
from services.profiles.store import ProfileStore, SqlProfileStore

SERVICE_NAME = "recofleet.profiles.v1.ProfilesService"
# How often the service looks whether the score boundaries are due for a recomputation.
SCORES_CHECK_S = 5.0
# How often the service forgets the processed event ids past the retention window.
log = logging.getLogger(__name__)


def profile_worker(bus: EventBus, store: ProfileStore, settings: ProfilesSettings) -> BusWorker:
    """The consumer that keeps profiles up to date from the events and catalog topics."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.items:
            store.save_catalog(decoded.items)
        # Commands first: a link or an erasure polled with events applies to them too.
        if decoded.commands:
            store.apply_commands(decoded.commands)
        if decoded.events:
            store.apply_events(decoded.events)
        return decoded.dead

    return BusWorker(
        bus, settings.consumer_group, [CATALOG_TOPIC, MEMBERS_TOPIC, EVENTS_TOPIC], handle
    )


async def keep_scores_fresh(
    store: ProfileStore, schedule: ScoreSchedule, clock: Clock, check_s: float = SCORES_CHECK_S
) -> None:
    """Recompute the score boundaries whenever the schedule says they are due."""
    orders_then = store.orders_applied
    while True:
        try:
            current = await asyncio.to_thread(store.scoring)
            if schedule.due(current, clock.now(), store.orders_applied - orders_then):
                orders_then = store.orders_applied
                done = await asyncio.to_thread(store.recompute_scoring, clock.now())
                log.info("score boundaries recomputed over %d members", done.population)
        except Exception:
            # The next check tries again; reads keep the boundaries they have.
            log.exception("recomputing the score boundaries failed")
        await asyncio.sleep(check_s)


# The first count waits this long at most after start: a pass over every member right at
# start would compete with the consumer catching up (a million members: about two minutes).
FIRST_COUNT_S = 300.0


async def keep_sizes_counted(segmenter: Segmenter, interval_s: float) -> None:
    """Count every segment now and then, so that each day has its point in the trends."""
    await asyncio.sleep(min(interval_s, FIRST_COUNT_S))
    while True:
        try:
            counted = await asyncio.to_thread(segmenter.sizes)
            log.info("segment sizes counted over %d members", counted.members)
        except Exception:
            log.exception("counting the segment sizes failed")
        await asyncio.sleep(interval_s)


async def run(fleet: FleetSettings, settings: ProfilesSettings) -> None:
    bus = open_bus(fleet)
    try:
        store = SqlProfileStore.from_url(
            settings.database_url or fleet.sqlite_url("profiles"), settings, pii_secret(fleet)
        )
    except OutdatedSchema as exc:
        raise SystemExit(str(exc)) from None
    clock = fleet.clock()
    worker = profile_worker(bus, store, settings)
    worker.start()
    portraitist = Portraitist(settings)
    segmenter = Segmenter(
        store, portraitist, clock, settings.segment_sizes_ttl_s, settings.segment_trend_days
    )
    servicer = ProfilesServicer(store, settings.recent_items, portraitist, clock, segmenter)
    schedule = ScoreSchedule(settings.scores_interval_s, settings.scores_stale_share)
    scores = asyncio.create_task(keep_scores_fresh(store, schedule, clock))
    retention = timedelta(hours=fleet.processed_retention_hours)
    pruning = asyncio.create_task(keep_processed_pruned(store, retention))
    background = [scores, pruning]
    if settings.segment_sizes_interval_s > 0:
        interval = settings.segment_sizes_interval_s
        background.append(asyncio.create_task(keep_sizes_counted(segmenter, interval)))

    def register(server: grpc.aio.Server) -> None:
        profiles_pb2_grpc.add_ProfilesServiceServicer_to_server(servicer, server)

    async def close() -> None:
        for task in background:
            task.cancel()
        await asyncio.to_thread(worker.stop)
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.profiles_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=lambda: worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("profiles", fleet)
    asyncio.run(run(fleet, ProfilesSettings()))
