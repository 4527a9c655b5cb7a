"""Entry point: `python -m services.analytics`."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc

from services.analytics.consumer import analytics_worker
from services.analytics.servicer import AnalyticsServicer
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import SqlAnalyticsStore
from services.common.bus import open_bus
from services.common.grpc_server import serve
from services.common.migrations import OutdatedSchema
from services.common.pii import pii_secret
from services.common.pruning import keep_processed_pruned
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
from services.gen.recofleet.analytics.v1 import analytics_pb2_grpc

SERVICE_NAME = "recofleet.analytics.v1.AnalyticsService"
log = logging.getLogger(__name__)


def open_store(fleet: FleetSettings, settings: AnalyticsSettings) -> SqlAnalyticsStore:
    url = settings.database_url or fleet.sqlite_url("analytics")
    try:
        return SqlAnalyticsStore.from_url(url, settings, pii_secret(fleet))
    except OutdatedSchema as exc:
        raise SystemExit(str(exc)) from None


async def run(fleet: FleetSettings, settings: AnalyticsSettings) -> None:
    bus = open_bus(fleet)
    store = open_store(fleet, settings)
    worker = analytics_worker(bus, store, settings)
    worker.start()
    servicer = AnalyticsServicer(store, settings, fleet.clock())
    retention = timedelta(hours=fleet.processed_retention_hours)
    pruning = asyncio.create_task(keep_processed_pruned(store, retention, settings.prune_every_s))

    def register(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)

    async def close() -> None:
        pruning.cancel()
        await asyncio.to_thread(worker.stop)
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.analytics_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=lambda: worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("analytics", fleet)
    asyncio.run(run(fleet, AnalyticsSettings()))
