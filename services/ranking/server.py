"""Entry point: `python -m services.ranking`."""

from __future__ import annotations

import asyncio

import grpc

from services.common.grpc_server import configure_logging, serve
from services.common.settings import FleetSettings
from services.gen.recofleet.ranking.v1 import ranking_pb2_grpc
from services.ranking.rankers import build_rankers
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

SERVICE_NAME = "recofleet.ranking.v1.RankingService"


async def run(fleet: FleetSettings, settings: RankingSettings) -> None:
    rankers = build_rankers(settings)
    servicer = RankingServicer(rankers, settings.default_ranker)

    def register(server: grpc.aio.Server) -> None:
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)

    # Ranking keeps no state and has no dependency: if it answers, it can rank.
    await serve(
        service_name=SERVICE_NAME,
        address=fleet.ranking_addr,
        register=register,
        probe=lambda: bool(rankers),
    )


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    asyncio.run(run(fleet, RankingSettings()))
