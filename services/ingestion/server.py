"""Entry point: `python -m services.ingestion`."""

from __future__ import annotations

import asyncio

import grpc

from services.common.bus import open_bus
from services.common.grpc_server import serve
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
from services.gen.recofleet.ingestion.v1 import ingestion_pb2_grpc
from services.ingestion.domain import open_ingestor
from services.ingestion.servicer import IngestionServicer
from services.ingestion.settings import IngestionSettings

SERVICE_NAME = "recofleet.ingestion.v1.IngestionService"


async def run(fleet: FleetSettings, settings: IngestionSettings) -> None:
    bus = open_bus(fleet)
    servicer = IngestionServicer(open_ingestor(fleet, bus, settings))

    def register(server: grpc.aio.Server) -> None:
        ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(servicer, server)

    async def close() -> None:
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.ingestion_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=bus.healthy,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("ingestion", fleet)
    asyncio.run(run(fleet, IngestionSettings()))
