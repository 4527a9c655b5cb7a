"""gRPC face of ranking."""

from __future__ import annotations

import grpc

from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.rankers import MemberContext, Ranker


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, rankers: dict[str, Ranker], default: str) -> None:
        self._rankers = rankers
        self._default = default

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        name = request.ranker or self._default
        try:
            ranker = self._rankers[name]
        except KeyError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown ranker '{name}'; known: {sorted(self._rankers)}",
            )
            raise  # abort() raises; this only tells readers and type checkers so
        member = MemberContext(
            member_id=request.member.member_id,
            category_weights=dict(request.member.category_weights),
            orders=request.member.orders,
        )
        limit = request.limit or len(request.candidates)
        ranked = ranker.rank(member, request.candidates, request.placement, limit)
        return ranking_pb2.RankResponse(
            model=ranker.name,
            items=[
                common_pb2.ScoredItem(
                    item_id=r.item_id, score=r.score, reasons=r.reasons, category=r.category
                )
                for r in ranked
            ],
        )
