"""A per-placement category cap, applied after whichever ranker answers."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from services.common.clock import Clock
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.diversity import capped
from services.ranking.domain import RankerBook
from services.ranking.rankers import RankedItem
from services.ranking.registry import BUILT_INS
from services.ranking.servicer import RankingServicer
from services.ranking.settings import Diversity, RankingSettings
from services.ranking.store import SqlRankingStore

AT = datetime(2026, 12, 1, tzinfo=UTC)


def _items(*categories: str) -> list[RankedItem]:
    return [RankedItem(f"i-{n}", 1 - n / 100, [], c) for n, c in enumerate(categories)]


def test_at_most_n_per_category_in_the_ranker_order() -> None:
    ranked = _items("garden", "garden", "garden", "books", "garden", "toys")

    kept = capped(ranked, limit=4, per_category=2)

    assert [i.item_id for i in kept] == ["i-0", "i-1", "i-3", "i-5"]


def test_a_short_list_is_filled_with_what_the_cap_moved_back() -> None:
    ranked = _items("garden", "garden", "garden", "books")

    kept = capped(ranked, limit=4, per_category=1)

    assert [i.item_id for i in kept] == ["i-0", "i-3", "i-1", "i-2"]


def test_items_without_a_category_are_not_capped() -> None:
    assert len(capped(_items("", "", "", ""), limit=3, per_category=1)) == 3


@contextlib.asynccontextmanager
async def serving_ranking(
    tmp_path: Path, diversity: dict[str, Diversity], at: datetime
) -> AsyncIterator[ranking_pb2_grpc.RankingServiceStub]:
    """A ranking service (the built-in rankers, this diversity per placement) on an
    in-process gRPC server, and a stub to it."""
    store = SqlRankingStore.from_url(f"sqlite:///{tmp_path / 'ranking.db'}")
    book = RankerBook(BUILT_INS, store, RankingSettings(), tmp_path / "models", Clock.fixed(at))
    server = grpc.aio.server()
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(RankingServicer(book, diversity), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ranking_pb2_grpc.RankingServiceStub(channel)
    finally:
        await server.stop(None)
        store.close()


@pytest.fixture
async def ranking(tmp_path: Path) -> AsyncIterator[ranking_pb2_grpc.RankingServiceStub]:
    async with serving_ranking(tmp_path, {"home": Diversity(max_per_category=2)}, AT) as stub:
        yield stub


async def test_the_placement_s_cap_applies_to_the_answer(
    ranking: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    candidates = [
        common_pb2.Candidate(item_id=f"g-{n}", score=1 - n / 100, category="garden")
        for n in range(8)
    ] + [common_pb2.Candidate(item_id=f"b-{n}", score=0.5, category="books") for n in range(3)]

    async def categories(placement: str) -> Counter[str]:
        request = ranking_pb2.RankRequest(
            member=ranking_pb2.MemberContext(member_id="m-1"),
            candidates=candidates,
            placement=placement,
            limit=5,
        )
        reply = await ranking.Rank(request)
        assert len(reply.items) == 5
        return Counter(i.category for i in reply.items[:4])

    assert (await categories("home"))["garden"] == 2
    assert (await categories("cart"))["garden"] == 4
