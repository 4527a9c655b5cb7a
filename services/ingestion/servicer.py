"""gRPC face of ingestion: translates requests to the Ingestor and outcomes back."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import grpc

from services.common.bus import BusError
from services.common.timestamps import timestamp
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion.domain import BadPayload, Ingestor, Outcome, TooLate, TooManyEvents

log = logging.getLogger(__name__)
T = TypeVar("T")


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def PublishEvents(
        self, request: ingestion_pb2.PublishEventsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.PublishEventsResponse:
        outcome = await _publish(
            context, self._ingestor.publish_events, request.payload, request.format
        )
        return ingestion_pb2.PublishEventsResponse(
            accepted_event_ids=outcome.accepted,
            rejected=_rejections(outcome),
            ignored=outcome.ignored,
        )

    async def UpsertItems(
        self, request: ingestion_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.UpsertItemsResponse:
        outcome = await _publish(context, self._ingestor.upsert_items, request.payload)
        return ingestion_pb2.UpsertItemsResponse(
            accepted_item_ids=outcome.accepted, rejected=_rejections(outcome)
        )

    async def EraseMember(
        self, request: ingestion_pb2.EraseMemberRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.EraseMemberResponse:
        command = await _run(context, self._ingestor.erase_member, request.member_id)
        return ingestion_pb2.EraseMemberResponse(
            erasure_id=command.erasure_id, requested_at=timestamp(command.at)
        )

    async def GetBusStatus(
        self, request: ingestion_pb2.GetBusStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.BusStatus:
        status = await _run(context, self._ingestor.bus_status)
        return ingestion_pb2.BusStatus(
            consumers=[
                ingestion_pb2.ConsumerLag(group=c.group, topic=c.topic, lag=c.lag)
                for c in status.consumers
            ],
            dead_letters=status.dead_letters,
            location=status.location,
            consumers_unknown=status.consumers_unknown or "",
        )


class _Waiting:
    """Whether the caller still waits for this call's answer, asked by the domain from the
    worker thread right before it publishes.

    At the deadline grpc cancels the handler but not its worker thread, which would then
    publish what the gateway has already told its client to send again. The caller no
    longer waits once the call's deadline has passed or the call was cancelled (the caller
    gave up, the server is stopping).
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.abandoned = threading.Event()

    def __call__(self) -> bool:
        remaining = self._context.time_remaining()
        if self.abandoned.is_set() or (remaining is not None and remaining <= 0):
            log.warning("the caller stopped waiting before the batch was published; dropped")
            return False
        return True


async def _publish(context: grpc.aio.ServicerContext, call: Callable[..., T], *args: object) -> T:
    """`_run` for a call that publishes a batch, which it asks first whether the caller still
    waits (`in_time`); none does once this handler is cancelled."""
    waiting = _Waiting(context)
    try:
        return await _run(context, functools.partial(call, *args, in_time=waiting))
    except asyncio.CancelledError:
        waiting.abandoned.set()
        raise


async def _run(context: grpc.aio.ServicerContext, call: Callable[..., T], *args: object) -> T:
    """`call(*args)` off the event loop (publishing blocks on disk or network); its failures
    become the status that tells the gateway what to tell the client.

    A bad payload (or member id) is the client's to fix (no retry helps); a bus that cannot take the
    events is worth a retry (UNAVAILABLE), and so is a batch not published because the
    caller's deadline passed first (DEADLINE_EXCEEDED); anything else is a fault of ours
    (INTERNAL), logged with its traceback, which a retry of the same request would only repeat.
    """
    try:
        return await asyncio.to_thread(call, *args)
    except BadPayload as exc:
        await context.abort(_status(exc), str(exc))
    except TooLate as exc:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    except BusError as exc:
        log.warning("publishing failed: %s", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the event bus is unavailable: {exc}")
    except Exception:
        log.exception("ingestion failed on a request")
        await context.abort(grpc.StatusCode.INTERNAL, "ingestion failed on this request")
    raise AssertionError("context.abort returns only by raising")


def _status(exc: BadPayload) -> grpc.StatusCode:
    if isinstance(exc, TooManyEvents):
        return grpc.StatusCode.OUT_OF_RANGE
    return grpc.StatusCode.INVALID_ARGUMENT


def _rejections(outcome: Outcome) -> list[common_pb2.Rejection]:
    return [common_pb2.Rejection(index=r.index, id=r.id, reason=r.reason) for r in outcome.rejected]
