"""Events and catalog in: forwarded as sent to ingestion, which validates each one."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from services.gateway.deps import ClientsDep, SettingsDep
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2

router = APIRouter(prefix="/v1", tags=["events"])

EVENTS_EXAMPLE = {
    "type": "view",
    "member_id": "17850",
    "item_id": "85123A",
    "timestamp": "2026-11-22T10:00:00Z",
}


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


def _rejections(rejected: Any) -> list[dict[str, Any]]:
    return [{"index": r.index, "id": r.id, "reason": r.reason} for r in rejected]


async def _forward(call: Any, request: Any, timeout: float) -> Any:
    try:
        return await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise HTTPException(400, exc.details()) from exc
        # Nothing was accepted: say so, so that the client retries instead of losing events.
        raise HTTPException(503, f"ingestion unavailable ({exc.code().name}); retry") from exc


def _answer(accepted: list[str], rejected: list[common_pb2.Rejection], key: str) -> JSONResponse:
    # 202 when anything was taken; 422 when every entry was invalid.
    status = 202 if accepted or not rejected else 422
    body = {"accepted": len(accepted), key: accepted, "rejected": _rejections(rejected)}
    return JSONResponse(body, status_code=status)


@router.post(
    "/events",
    status_code=202,
    summary="Send one event or a batch {'events': [...]}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"example": {"events": [EVENTS_EXAMPLE]}}},
        }
    },
)
async def post_events(request: Request, clients: ClientsDep, settings: SettingsDep) -> JSONResponse:
    body = await read_body(request, settings.max_body_bytes)
    reply = await _forward(
        clients.ingestion.PublishEvents,
        ingestion_pb2.PublishEventsRequest(payload=body, format="native"),
        settings.deadlines.ingestion,
    )
    return _answer(list(reply.accepted_event_ids), list(reply.rejected), "event_ids")


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
async def put_items(request: Request, clients: ClientsDep, settings: SettingsDep) -> JSONResponse:
    body = await read_body(request, settings.max_body_bytes)
    reply = await _forward(
        clients.ingestion.UpsertItems,
        ingestion_pb2.UpsertItemsRequest(payload=body),
        settings.deadlines.ingestion,
    )
    response = _answer(list(reply.accepted_item_ids), list(reply.rejected), "item_ids")
    if response.status_code == 202:
        response.status_code = 200
    return response
