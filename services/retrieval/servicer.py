"""gRPC face of retrieval."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from services.common.candidates import to_protos
from services.gen.recofleet.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.domain import Answer, NoModel, Retriever

MAX_LIMIT = 1000


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, retriever: Retriever) -> None:
        self._retriever = retriever

    async def GetCandidates(
        self, request: retrieval_pb2.GetCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        limit = await _limit(request.limit, context)
        return await _answer(
            context,
            self._retriever.for_member,
            request.member_id,
            limit,
            list(request.exclude_item_ids),
        )

    async def GetSimilarItems(
        self, request: retrieval_pb2.GetSimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        if not request.item_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_id is required")
        limit = await _limit(request.limit, context)
        return await _answer(
            context, self._retriever.similar, request.item_id, limit, list(request.exclude_item_ids)
        )

    async def GetPopularItems(
        self, request: retrieval_pb2.GetPopularItemsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.CandidatesResponse:
        limit = await _limit(request.limit, context)
        return await _answer(
            context,
            self._retriever.popular,
            limit,
            list(request.exclude_item_ids),
            request.category or None,
        )

    async def GetModelInfo(
        self, request: retrieval_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.ModelInfo:
        try:
            meta = self._retriever.model.meta
        except NoModel as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return retrieval_pb2.ModelInfo(
            version=meta["version"],
            members=meta["members"],
            items=meta["items"],
            interactions=meta["interactions"],
            factors=meta["factors"],
            trained_at=meta["trained_at"],
        )


async def _limit(requested: int, context: grpc.aio.ServicerContext) -> int:
    if requested < 0 or requested > MAX_LIMIT:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIMIT}"
        )
    return requested or 10


async def _answer(
    context: grpc.aio.ServicerContext, call: Callable[..., Answer], *args: object
) -> retrieval_pb2.CandidatesResponse:
    try:
        answer = await asyncio.to_thread(call, *args)
    except NoModel as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    return retrieval_pb2.CandidatesResponse(
        candidates=to_protos(answer.candidates),
        model_version=answer.model_version,
        personalized=answer.personalized,
    )
