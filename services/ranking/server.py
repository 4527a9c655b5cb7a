"""Entry point: `python -m services.ranking`."""

from __future__ import annotations

import asyncio
import logging

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.common.grpc_server import configure_logging, serve
from services.common.settings import FleetSettings
from services.gen.recofleet.ranking.v1 import ranking_pb2_grpc
from services.ranking.domain import RankerBook
from services.ranking.registry import discover
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings
from services.ranking.store import SqlRankingStore

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


async def run(fleet: FleetSettings, settings: RankingSettings) -> None:
    store = SqlRankingStore.from_url(settings.database_url or fleet.sqlite_url("ranking"))
    book = RankerBook(discover(), store, settings, fleet.models_dir / "rankers", fleet.clock())
    servicer = RankingServicer(book)
    refresher = asyncio.create_task(keep_fresh(book, settings.refresh_s))

    def register(server: grpc.aio.Server) -> None:
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)

    async def close() -> None:
        refresher.cancel()
        store.close()

    # It can rank as long as it answers: the active ranker is in memory.
    await serve(
        service_name=SERVICE_NAME,
        address=fleet.ranking_addr,
        register=register,
        probe=lambda: True,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    asyncio.run(run(fleet, RankingSettings()))
