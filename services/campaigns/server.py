"""Entry point: `python -m services.campaigns`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.campaigns.servicer import CampaignsServicer
from services.campaigns.settings import CampaignsSettings
from services.campaigns.store import CatalogStore, SqlCatalogStore
from services.common.bus import CATALOG_TOPIC, EventBus, Record, open_bus
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.grpc_server import configure_logging, serve
from services.common.settings import FleetSettings
from services.gen.recofleet.campaigns.v1 import campaigns_pb2_grpc

SERVICE_NAME = "recofleet.campaigns.v1.CampaignsService"
log = logging.getLogger(__name__)


def catalog_worker(bus: EventBus, store: CatalogStore, settings: CampaignsSettings) -> BusWorker:
    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.items:
            store.save(decoded.items)
        return decoded.dead

    return BusWorker(bus, settings.consumer_group, [CATALOG_TOPIC], handle)


async def keep_stock_fresh(store: CatalogStore, interval_s: float) -> None:
    """What other replicas of campaigns saved reaches this one's memory within interval_s."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(store.refresh)
        except SQLAlchemyError as exc:
            log.warning("stock not refreshed from the store: %s", exc)


async def run(fleet: FleetSettings, settings: CampaignsSettings) -> None:
    bus = open_bus(fleet)
    store = SqlCatalogStore.from_url(settings.database_url or fleet.sqlite_url("campaigns"))
    worker = catalog_worker(bus, store, settings)
    worker.start()
    servicer = CampaignsServicer(store, settings)
    refresher = asyncio.create_task(keep_stock_fresh(store, settings.stock_refresh_s))

    def register(server: grpc.aio.Server) -> None:
        campaigns_pb2_grpc.add_CampaignsServiceServicer_to_server(servicer, server)

    async def close() -> None:
        refresher.cancel()
        await asyncio.to_thread(worker.stop)
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.campaigns_addr,
        register=register,
        probe=lambda: worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    asyncio.run(run(fleet, CampaignsSettings()))
