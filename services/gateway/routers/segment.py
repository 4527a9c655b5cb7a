"""Segment's HTTP Tracking API, so a site adds recofleet as a destination by changing the host.

Same paths and bodies as api.segment.io (`/v1/track`, `/v1/batch`, ...) under `/segment`,
authenticated like Segment: HTTP basic auth with the write key as user name (or a
`writeKey` field in the body).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from services.gateway.deps import ClientsDep, LimiterDep, SettingsDep
from services.gateway.routers.events import check_rate, client_key, publish, read_body

router = APIRouter(prefix="/segment/v1", tags=["segment"])
SingleCall = Literal["track", "identify", "page", "screen", "group", "alias"]


def _basic_auth_user(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        return base64.b64decode(encoded).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None


def _body_write_key(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    key = parsed.get("writeKey") if isinstance(parsed, dict) else None
    return key if isinstance(key, str) else None


def _authorize(expected: str | None, offered: str | None) -> None:
    if expected is None:
        raise HTTPException(
            503, "the Segment endpoints are off: set RECOFLEET_SEGMENT_WRITE_KEY to enable them"
        )
    if not offered or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong write key (HTTP basic auth user name)")


async def _receive(
    request: Request, clients: ClientsDep, settings: SettingsDep, limiter: LimiterDep, body: bytes
) -> JSONResponse:
    expected = settings.segment_write_key
    offered = _basic_auth_user(request) or _body_write_key(body)
    _authorize(expected.get_secret_value() if expected else None, offered)
    check_rate(limiter, client_key(request, offered))
    summary, status = await publish(clients.ingestion, settings, body, "segment")
    # Segment's clients look for `success`; ours also get the per-event outcome.
    return JSONResponse(
        {"success": status == 202, **summary}, status_code=200 if status == 202 else status
    )


@router.post("/batch", summary="Segment HTTP API batch: {'batch': [messages...]}")
async def batch(
    request: Request, clients: ClientsDep, settings: SettingsDep, limiter: LimiterDep
) -> JSONResponse:
    body = await read_body(request, settings.max_body_bytes)
    return await _receive(request, clients, settings, limiter, body)


@router.post("/{call}", summary="Segment HTTP API single call (track, identify, page, ...)")
async def single(
    call: SingleCall,
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
) -> JSONResponse:
    body = await read_body(request, settings.max_body_bytes)
    try:
        message = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise HTTPException(400, "a Segment call is one JSON object")
    # The path names the call type; Segment's own API lets the path decide it too.
    message.setdefault("type", call)
    return await _receive(request, clients, settings, limiter, json.dumps(message).encode())
