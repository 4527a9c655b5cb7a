"""Entry point: `python -m services.ingestion`."""

from __future__ import annotations

import asyncio

import grpc

from services.common.bus import open_bus
from services.common.grpc_server import configure_logging, serve
from services.common.pii import PiiScrubber, check_secret, local_secret
from services.common.settings import FleetSettings
from services.gen.recofleet.ingestion.v1 import ingestion_pb2_grpc
from services.ingestion.domain import Ingestor
from services.ingestion.servicer import IngestionServicer
from services.ingestion.settings import IngestionSettings

SERVICE_NAME = "recofleet.ingestion.v1.IngestionService"


def pii_secret(fleet: FleetSettings) -> bytes:
    """The secret PII is hashed with: from settings, or made once for a one-machine fleet.

    Every ingestion replica must hash alike, so a fleet on Kafka must be given one.
    """
    if fleet.pii_secret is not None:
        return check_secret(fleet.pii_secret.get_secret_value())
    if fleet.bus != "local":
        raise SystemExit("RECOFLEET_PII_SECRET must be set when events go to a shared bus")
    return local_secret(fleet.data_dir / "secrets" / "pii.key")


async def run(fleet: FleetSettings, settings: IngestionSettings) -> None:
    scrubber = PiiScrubber(pii_secret(fleet))
    bus = open_bus(fleet)
    servicer = IngestionServicer(Ingestor(bus, scrubber, settings))

    def register(server: grpc.aio.Server) -> None:
        ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(servicer, server)

    async def close() -> None:
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.ingestion_addr,
        register=register,
        probe=bus.healthy,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    asyncio.run(run(fleet, IngestionSettings()))
