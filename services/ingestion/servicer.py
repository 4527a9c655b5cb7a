"""gRPC face of ingestion: translates requests to the Ingestor and outcomes back."""

from __future__ import annotations

import asyncio

import grpc

from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion.domain import BadPayload, Ingestor, Outcome, TooManyEvents


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def PublishEvents(
        self, request: ingestion_pb2.PublishEventsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.PublishEventsResponse:
        try:
            # Publishing blocks on disk or network; keep the event loop free meanwhile.
            outcome = await asyncio.to_thread(
                self._ingestor.publish_events, request.payload, request.format
            )
        except BadPayload as exc:
            await context.abort(_status(exc), str(exc))
        return ingestion_pb2.PublishEventsResponse(
            accepted_event_ids=outcome.accepted,
            rejected=_rejections(outcome),
            ignored=outcome.ignored,
        )

    async def UpsertItems(
        self, request: ingestion_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.UpsertItemsResponse:
        try:
            outcome = await asyncio.to_thread(self._ingestor.upsert_items, request.payload)
        except BadPayload as exc:
            await context.abort(_status(exc), str(exc))
        return ingestion_pb2.UpsertItemsResponse(
            accepted_item_ids=outcome.accepted, rejected=_rejections(outcome)
        )


def _status(exc: BadPayload) -> grpc.StatusCode:
    if isinstance(exc, TooManyEvents):
        return grpc.StatusCode.OUT_OF_RANGE
    return grpc.StatusCode.INVALID_ARGUMENT


def _rejections(outcome: Outcome) -> list[common_pb2.Rejection]:
    return [common_pb2.Rejection(index=r.index, id=r.id, reason=r.reason) for r in outcome.rejected]
