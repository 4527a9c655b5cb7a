"""Events and catalog in: forwarded as sent to ingestion, which validates each one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from services.gateway.deps import ClientsDep, LimiterDep, SettingsDep
from services.gateway.limits import RateLimiter
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

router = APIRouter(prefix="/v1", tags=["events"])

EventFormat = Literal["native", "segment", "ga4", "google_retail"]
EVENTS_EXAMPLE = {
    "type": "view",
    "member_id": "17850",
    "item_id": "85123A",
    "timestamp": "2026-11-22T10:00:00Z",
}


def client_key(request: Request, credential: str | None = None) -> str:
    """Who a rate limit applies to: an API key or write key when sent, else the client address."""
    api_key = request.headers.get("x-api-key")
    if api_key:
        return f"key:{api_key}"
    if credential:
        return f"write-key:{credential}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


def check_rate(limiter: RateLimiter, key: str) -> None:
    wait = limiter.allow(key)
    if wait:
        raise HTTPException(
            429,
            f"rate limit exceeded for this client; retry in {wait:.2f}s",
            headers={"Retry-After": str(max(1, round(wait)))},
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    if not body:
        raise HTTPException(400, 'empty body: send one JSON object or {"events": [...]}')
    return bytes(body)


def _rejections(rejected: list[common_pb2.Rejection]) -> list[dict[str, Any]]:
    return [{"index": r.index, "id": r.id, "reason": r.reason} for r in rejected]


async def forward(call: Any, message: Any, timeout: float) -> Any:
    """Call ingestion; its refusals become 4xx, its absence a 503 the client should retry."""
    try:
        return await call(message, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise HTTPException(400, exc.details()) from exc
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
            raise HTTPException(413, exc.details()) from exc
        # Nothing was accepted: say so, so that the client retries instead of losing events.
        raise HTTPException(503, f"ingestion unavailable ({exc.code().name}); retry") from exc


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
    summary = {
        "accepted": len(reply.accepted_event_ids),
        "event_ids": list(reply.accepted_event_ids),
        "rejected": _rejections(list(reply.rejected)),
        "ignored": reply.ignored,
    }
    nothing_taken = not reply.accepted_event_ids and reply.rejected
    return summary, 422 if nothing_taken else 202


@router.post(
    "/events",
    status_code=202,
    summary="Send one event or a batch {'events': [...]}, natively or in a shop's format",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"example": {"events": [EVENTS_EXAMPLE]}}},
        }
    },
)
async def post_events(
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    format: Annotated[EventFormat, Query(description="Shape of the events sent")] = "native",
) -> JSONResponse:
    check_rate(limiter, client_key(request))
    body = await read_body(request, settings.max_body_bytes)
    summary, status = await publish(clients.ingestion, settings, body, format)
    return JSONResponse(summary, status_code=status)


@router.put(
    "/items",
    summary="Insert or replace catalog items: one item or {'items': [...]}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "example": {
                        "items": [
                            {
                                "item_id": "85123A",
                                "category": "candles-lights",
                                "price": 2.55,
                                "in_stock": True,
                            }
                        ]
                    }
                }
            },
        }
    },
)
async def put_items(
    request: Request, clients: ClientsDep, settings: SettingsDep, limiter: LimiterDep
) -> JSONResponse:
    check_rate(limiter, client_key(request))
    body = await read_body(request, settings.max_body_bytes)
    reply = await forward(
        clients.ingestion.UpsertItems,
        ingestion_pb2.UpsertItemsRequest(payload=body),
        settings.deadlines.ingestion,
    )
    summary = {
        "accepted": len(reply.accepted_item_ids),
        "item_ids": list(reply.accepted_item_ids),
        "rejected": _rejections(list(reply.rejected)),
    }
    status = 422 if not reply.accepted_item_ids and reply.rejected else 200
    return JSONResponse(summary, status_code=status)
