"""Entry point: `python -m services.profiles`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, EventBus, Record, open_bus
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.grpc_server import configure_logging, serve
from services.common.settings import FleetSettings
from services.gen.recofleet.profiles.v1 import profiles_pb2_grpc
from services.profiles.servicer import ProfilesServicer
from services.profiles.settings import ProfilesSettings
from services.profiles.store import ProfileStore, SqlProfileStore

SERVICE_NAME = "recofleet.profiles.v1.ProfilesService"


def profile_worker(bus: EventBus, store: ProfileStore, settings: ProfilesSettings) -> BusWorker:
    """The consumer that keeps profiles up to date from the events and catalog topics."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.items:
            store.save_catalog(decoded.items)
        if decoded.events:
            store.apply_events(decoded.events)
        return decoded.dead

    return BusWorker(bus, settings.consumer_group, [CATALOG_TOPIC, EVENTS_TOPIC], handle)


async def run(fleet: FleetSettings, settings: ProfilesSettings) -> None:
    bus = open_bus(fleet)
    store = SqlProfileStore.from_url(
        settings.database_url or fleet.sqlite_url("profiles"), settings
    )
    worker = profile_worker(bus, store, settings)
    worker.start()
    servicer = ProfilesServicer(store, settings.recent_items)

    def register(server: grpc.aio.Server) -> None:
        profiles_pb2_grpc.add_ProfilesServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await asyncio.to_thread(worker.stop)
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.profiles_addr,
        register=register,
        probe=lambda: worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    asyncio.run(run(fleet, ProfilesSettings()))
