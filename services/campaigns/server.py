"""Entry point: `python -m services.campaigns`.

One process serves both contracts of campaigns.proto: CampaignsService (campaigns, offers,
exports, reports) and MerchandisingService (the rules over every placement's list).
Three consumers keep it current: the catalog (stock, prices, tags for the rules), and the
members' purchases and commands (redemptions, erasures, identity links).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.campaigns.campaign_store import SqlCampaignStore
from services.campaigns.desk import CampaignDesk
from services.campaigns.merch_servicer import MerchandisingServicer
from services.campaigns.peers import AnalyticsOutcomes, ProfilesPortraits
from services.campaigns.servicer import CampaignsServicer
from services.campaigns.settings import CampaignsSettings
from services.campaigns.store import CatalogStore, SqlCatalogStore
from services.common.bus import (
    CATALOG_TOPIC,
    EVENTS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
    Record,
    open_bus,
)
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.grpc_server import open_channel, serve
from services.common.pii import pii_secret
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
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


def redemptions_worker(bus: EventBus, desk: CampaignDesk, settings: CampaignsSettings) -> BusWorker:
    """Purchases carrying a campaign's coupon become redemptions (each order once); erasures
    and identity links reach the exposures and codes."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.commands:
            desk.apply_commands(decoded.commands)
        if decoded.events:
            desk.apply_events(decoded.events)
        return decoded.dead

    return BusWorker(bus, settings.redemptions_group, [MEMBERS_TOPIC, EVENTS_TOPIC], handle)


async def every(interval_s: float, work: Callable[[], None], what: str) -> None:
    """`work` every `interval_s` in a worker thread: what other replicas saved reaches this
    one's memory."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(work)
        except SQLAlchemyError as exc:
            log.warning("%s not refreshed from the store: %s", what, exc)


async def run(fleet: FleetSettings, settings: CampaignsSettings) -> None:
    bus = open_bus(fleet)
    url = settings.database_url or fleet.sqlite_url("campaigns")
    catalog = SqlCatalogStore.from_url(url)
    store = SqlCampaignStore.from_url(url, pii_secret(fleet))
    profiles = open_channel(fleet.profiles_addr)
    analytics = open_channel(fleet.analytics_addr)
    desk = CampaignDesk(
        store,
        ProfilesPortraits(profiles, settings.profiles_deadline_s),
        bus.publish,
        fleet.clock(),
        settings,
    )
    desk.seed_welcome(settings.welcome)
    workers = [catalog_worker(bus, catalog, settings), redemptions_worker(bus, desk, settings)]
    for worker in workers:
        worker.start()
    merchandising = MerchandisingServicer(
        catalog, fleet.clock(), settings.merchandising, desk.promoted
    )
    servicer = CampaignsServicer(
        desk,
        AnalyticsOutcomes(analytics, settings.analytics_deadline_s),
        settings,
        merchandising.ApplyRules,
    )
    refreshers = [
        asyncio.create_task(every(settings.stock_refresh_s, catalog.refresh, "stock")),
        asyncio.create_task(every(settings.campaigns_refresh_s, desk.refresh, "campaigns")),
        asyncio.create_task(merchandising.keep_rules_fresh()),
    ]

    def register(server: grpc.aio.Server) -> None:
        campaigns_pb2_grpc.add_CampaignsServiceServicer_to_server(servicer, server)
        campaigns_pb2_grpc.add_MerchandisingServiceServicer_to_server(merchandising, server)

    async def close() -> None:
        for task in refreshers:
            task.cancel()
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        await profiles.close()
        await analytics.close()
        catalog.close()
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.campaigns_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=lambda: all(worker.alive for worker in workers),
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("campaigns", fleet)
    asyncio.run(run(fleet, CampaignsSettings()))
