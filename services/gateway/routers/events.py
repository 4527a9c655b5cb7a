"""Events and catalog in: forwarded as sent to ingestion, which validates each one."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from services.gateway.auth import require
from services.gateway.bodies import ACCEPTED, check_media_type, read_body
from services.gateway.calls import RETRYABLE
from services.gateway.deps import ClientsDep, LimiterDep, SettingsDep, TrafficDep
from services.gateway.limits import RateLimiter
from services.gateway.responses import errors, raw_body_schema, similar_items_link
from services.gateway.schemas import (
    ErrorBody,
    EventsAccepted,
    EventsRefused,
    ItemsAccepted,
    ItemsRefused,
)
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["events"])

EventFormat = Literal["native", "segment", "ga4", "google_retail"]
EVENTS_EXAMPLE = {
    "type": "view",
    "member_id": "17850",
    "item_id": "85123A",
    "timestamp": "2026-11-22T10:00:00Z",
}
ITEMS_EXAMPLE = {
    "items": [{"item_id": "85123A", "category": "candles-lights", "price": 2.55, "in_stock": True}]
}
# Ingestion stopped answering part way: it publishes nothing once the deadline has passed,
# but it may have been publishing at that very moment. The outcome is unknown.
OUTCOME_UNKNOWN = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
INGESTION_ERRORS = errors(
    400,
    413,
    415,
    429,
    500,
    503,
    descriptions={
        400: "The body is empty or not JSON recofleet can read, or not shaped like a request "
        "of this format (the detail says where); nothing was accepted.",
        500: "Ingestion failed on this request (a bug, logged); sending it again will not help.",
        503: "Ingestion is unavailable (down or overloaded), or did not answer in time, and "
        "then it may have accepted the request just as the gateway stopped waiting (the "
        "detail says so): send the same request again. Events are applied once per event_id, "
        "so a native event sent without one may count twice.",
    },
)


def raw_json_body(description: str, schema: dict[str, Any], example: Any) -> dict[str, Any]:
    """The `requestBody` of a route that reads its body itself, as sent, for ingestion to
    validate entry by entry: any JSON object or array gets there."""
    return {
        "requestBody": {
            "required": True,
            "description": f"{description} Content types: {ACCEPTED} (or none); "
            "any other is refused with 415.",
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


def client_key(request: Request, write_key: str | None = None) -> str:
    """Whom a rate limit applies to: a verified Segment write key when there is one, else the
    verified access key, else the address.

    Only verified credentials may choose a bucket: an unverified header (an `X-API-Key` the
    gateway does not know, say) would give a caller a fresh bucket per value. The access key
    is the one `require` verified (`request.state.access_key`), counted by its public id. The
    address is the TCP peer's, or what a trusted proxy forwarded
    (`RECOFLEET_GATEWAY_TRUSTED_PROXIES`).
    """
    if write_key:
        return f"write-key:{hashlib.sha256(write_key.encode()).hexdigest()[:16]}"
    access_key = getattr(request.state, "access_key", None)
    if access_key is not None:
        return f"access-key:{access_key.id}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


def check_rate(limiter: RateLimiter, key: str) -> None:
    wait = limiter.allow(key)
    if wait:
        raise HTTPException(
            429,
            f"rate limit exceeded for this client; retry in {wait:.2f}s",
            headers={"Retry-After": str(max(1, round(wait)))},
        )


def _rejections(rejected: list[common_pb2.Rejection]) -> list[dict[str, Any]]:
    return [{"index": r.index, "id": r.id, "reason": r.reason} for r in rejected]


async def forward(call: Any, message: Any, timeout: float) -> Any:
    """Call ingestion and turn its refusals into HTTP statuses a client can act on.

    INVALID_ARGUMENT (a body it cannot read) is 400, OUT_OF_RANGE (too many events) 413.
    When ingestion is unreachable, overloaded or too slow the same request should be sent
    again: 503; a slow one may have accepted it all the same, and the detail does not say
    otherwise. Anything else (INTERNAL, UNKNOWN, ...) is a failure on this request that a
    retry will not cure: 500, logged.
    """
    try:
        return await call(message, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise HTTPException(400, exc.details()) from exc
        if code == grpc.StatusCode.OUT_OF_RANGE:
            raise HTTPException(413, exc.details()) from exc
        if code in RETRYABLE:
            raise HTTPException(503, _retry(code), headers={"Retry-After": "1"}) from exc
        log.error("ingestion failed: %s: %s", code.name, exc.details())
        raise HTTPException(
            500,
            f"ingestion failed on this request ({code.name}); it is logged, and sending the "
            "same request again will not help",
        ) from exc


def _retry(code: grpc.StatusCode) -> str:
    if code in OUTCOME_UNKNOWN:
        return (
            f"ingestion did not answer in time ({code.name}); it may have accepted the "
            "request: send it again (events are applied once per event_id)"
        )
    return f"ingestion unavailable ({code.name}); retry"


def _nothing_taken(what: str, rejected: int) -> str:
    return f"no {what} accepted: {rejected} rejected (see 'rejected' for each reason)"


async def publish(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    settings: GatewaySettings,
    body: bytes,
    fmt: str,
) -> tuple[dict[str, Any], int]:
    """Publish a payload; the summary body and its status (202, or 422 when nothing was taken)."""
    reply = await forward(
        stub.PublishEvents,
        ingestion_pb2.PublishEventsRequest(payload=body, format=fmt),
        settings.deadlines.ingestion,
    )
    summary: dict[str, Any] = {
        "accepted": len(reply.accepted_event_ids),
        "event_ids": list(reply.accepted_event_ids),
        "rejected": _rejections(list(reply.rejected)),
        "ignored": reply.ignored,
    }
    if not reply.accepted_event_ids and reply.rejected:
        summary["detail"] = _nothing_taken("event", len(reply.rejected))
        return summary, 422
    return summary, 202


@router.post(
    "/events",
    operation_id="post_events",
    dependencies=[require("events:write")],
    status_code=202,
    summary="Send one event or a batch {'events': [...]}, natively or in a shop's format",
    response_model=EventsAccepted,
    responses={
        202: {
            "description": "Some events were accepted (or none was sent, or all were ignored); "
            "the invalid ones are listed with their reasons."
        },
        **INGESTION_ERRORS,
        **errors(
            422,
            descriptions={
                422: "No event was accepted (the summary says why for each), "
                "or the `format` parameter is invalid."
            },
            models={422: EventsRefused | ErrorBody},
        ),
    },
    openapi_extra=raw_json_body(
        'One event or `{"events": [...]}` in the format `format` names: native events as '
        "below; Segment, GA4 or Google Retail bodies as those services take them (JSON lines "
        "too for `google_retail`). Any JSON object or array is read; each event is validated "
        "on its own.",
        raw_body_schema("Event", "events"),
        {"events": [EVENTS_EXAMPLE]},
    ),
)
async def post_events(
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    traffic: TrafficDep,
    format: Annotated[EventFormat, Query(description="Shape of the events sent")] = "native",
) -> JSONResponse:
    check_rate(limiter, client_key(request))
    check_media_type(request)
    body = await read_body(request, settings.max_body_bytes, 'one JSON event or {"events": [...]}')
    summary, status = await publish(clients.ingestion, settings, body, format)
    traffic.accepted(summary["accepted"])
    return JSONResponse(summary, status_code=status)


@router.put(
    "/items",
    operation_id="put_items",
    dependencies=[require("events:write")],
    summary="Insert or replace catalog items: one item or {'items': [...]}",
    response_model=ItemsAccepted,
    responses={
        200: {
            "description": "The items accepted (each replaces what was known of it) and the "
            "ones rejected, with their reasons.",
            "links": {"similar": similar_items_link("/item_ids/0")},
        },
        **INGESTION_ERRORS,
        **errors(
            422,
            descriptions={422: "No item was accepted (the summary says why for each)."},
            models={422: ItemsRefused},
        ),
    },
    openapi_extra=raw_json_body(
        'One catalog item or `{"items": [...]}`; each item is validated on its own.',
        raw_body_schema("CatalogItem", "items"),
        ITEMS_EXAMPLE,
    ),
)
async def put_items(
    request: Request, clients: ClientsDep, settings: SettingsDep, limiter: LimiterDep
) -> JSONResponse:
    check_rate(limiter, client_key(request))
    check_media_type(request)
    body = await read_body(request, settings.max_body_bytes, 'one JSON item or {"items": [...]}')
    reply = await forward(
        clients.ingestion.UpsertItems,
        ingestion_pb2.UpsertItemsRequest(payload=body),
        settings.deadlines.ingestion,
    )
    summary: dict[str, Any] = {
        "accepted": len(reply.accepted_item_ids),
        "item_ids": list(reply.accepted_item_ids),
        "rejected": _rejections(list(reply.rejected)),
    }
    if not reply.accepted_item_ids and reply.rejected:
        summary["detail"] = _nothing_taken("item", len(reply.rejected))
        return JSONResponse(summary, status_code=422)
    return JSONResponse(summary, status_code=200)
