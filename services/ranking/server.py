"""Entry point: `python -m services.ranking`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.common.bus import EVENTS_TOPIC, BusError, EventBus, Record, open_bus
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.grpc_server import serve
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
from services.gen.recofleet.ranking.v1 import ranking_pb2_grpc
from services.ranking.domain import RankerBook, ranker_store
from services.ranking.features import ItemFeatureState
from services.ranking.ltr import STATE_FILE
from services.ranking.registry import discover
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings
from services.ranking.store import SqlRankingStore
from services.ranking.training import LTR

SERVICE_NAME = "recofleet.ranking.v1.RankingService"
log = logging.getLogger(__name__)


async def keep_fresh(book: RankerBook, interval_s: float) -> None:
    """What other replicas activated or started reaches this one within interval_s."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(book.refresh)
        except SQLAlchemyError as exc:
            log.warning("rankers and experiments not refreshed from the store: %s", exc)


def live_features(rankers: FleetSettings | Path, settings: RankingSettings) -> ItemFeatureState:
    """The items' state the learned ranker reads: the newest trained version's, as of its
    training, or an empty one before the first (or while the model store is out of reach:
    the bus refills it)."""
    store = ranker_store(rankers, LTR, settings)
    try:
        current = store.current()
        carried = store.path(current) / STATE_FILE if current else None
        if carried is None or not carried.is_file():
            return ItemFeatureState()
        return ItemFeatureState.restore(carried.read_bytes())
    except ValueError as exc:
        log.warning("the items' state of ltr is unreadable (%s): starting empty", exc)
    except OSError as exc:
        log.warning("the items' state of ltr could not be read (%s): starting empty", exc)
    return ItemFeatureState()


def feature_worker(bus: EventBus, state: ItemFeatureState, group: str) -> BusWorker:
    """Keeps `state` current from the events topic, read from its start by a group of this
    process's own (the state is in memory: each replica builds its own, and a restart reads
    again); events the state already holds (up to its latest instant) are skipped."""
    since = state.latest

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        events = decode(records).events
        state.apply(e for e in events if since is None or e.timestamp > since)
        # Records that do not decode are the dead letters of the services that own them.
        return []

    return BusWorker(bus, group, [EVENTS_TOPIC], handle, commit=False)


async def run(fleet: FleetSettings, settings: RankingSettings) -> None:
    store = SqlRankingStore.from_url(settings.database_url or fleet.sqlite_url("ranking"))
    features = live_features(fleet, settings)
    bus = open_bus(fleet)
    group = f"ranking-features-{uuid.uuid4().hex[:12]}"
    worker = feature_worker(bus, features, group)
    worker.start()
    book = RankerBook(discover(), store, settings, fleet, fleet.clock(), features)
    servicer = RankingServicer(book, settings.diversity)
    refresher = asyncio.create_task(keep_fresh(book, settings.refresh_s))

    def register(server: grpc.aio.Server) -> None:
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)

    async def close() -> None:
        refresher.cancel()
        await asyncio.to_thread(worker.stop)
        with contextlib.suppress(BusError):
            bus.drop_group(group)
        store.close()
        bus.close()

    # It can rank as long as it answers (the active ranker is in memory) and the items'
    # state is being kept.
    await serve(
        service_name=SERVICE_NAME,
        address=fleet.ranking_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=lambda: worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("ranking", fleet)
    asyncio.run(run(fleet, RankingSettings()))
