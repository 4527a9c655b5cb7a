"""Segment's HTTP Tracking API, so a site adds recofleet as a destination by changing the host.

Same paths and bodies as api.segment.io (`/v1/track`, `/v1/batch`, ...) under `/segment`,
authenticated like Segment: HTTP basic auth with the write key as user name, or, without
an `Authorization: Basic` header, a `writeKey` field in the body.

Credentials are checked before any body is parsed: a wrong basic-auth key is refused
before the body is read, and a body is only parsed when the expected key occurs in it
literally (so a body written in `\\u` escapes to hide it is refused too). When no write key
is configured the endpoints are off and answer 404: no retry can succeed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from services.common.jsonbody import BodyError, decode
from services.gateway.bodies import check_media_type, read_body
from services.gateway.clients import FleetClients
from services.gateway.deps import ClientsDep, LimiterDep, SettingsDep, TrafficDep
from services.gateway.limits import RateLimiter
from services.gateway.responses import errors
from services.gateway.routers.events import (
    INGESTION_ERRORS,
    check_rate,
    client_key,
    publish,
    raw_json_body,
)
from services.gateway.schemas import SegmentAccepted, SegmentErrorBody
from services.gateway.settings import GatewaySettings
from services.gateway.traffic import Traffic

router = APIRouter(prefix="/segment/v1", tags=["segment"])
SingleCall = Literal["track", "identify", "page", "screen", "group", "alias"]
OFF = "the Segment endpoints are off: set RECOFLEET_SEGMENT_WRITE_KEY to enable them"
WRONG_KEY = "missing or wrong write key (HTTP basic auth user name, or the body's writeKey)"
CHALLENGE = {"WWW-Authenticate": 'Basic realm="recofleet segment"'}

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment message (Tracking API spec); kinds recofleet does not use "
    "are counted in `ignored`.",
    "properties": {
        "type": {
            "type": "string",
            "enum": ["track", "identify", "page", "screen", "group", "alias"],
        },
        "event": {"type": "string"},
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "messageId": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}
TRACK_EXAMPLE = {
    "type": "track",
    "event": "Product Viewed",
    "userId": "17850",
    "messageId": "m-1",
    "timestamp": "2026-11-22T10:00:00Z",
    "properties": {"product_id": "85123A", "price": 2.55},
}
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "items": MESSAGE_SCHEMA},
        "writeKey": {"type": "string"},
        "context": {"type": "object"},
        "sentAt": {"type": "string", "format": "date-time"},
    },
}
SEGMENT_ERRORS = {
    status: {**response, "model": SegmentErrorBody}
    for status, response in {
        **INGESTION_ERRORS,
        **errors(
            401,
            404,
            descriptions={
                401: "Missing or wrong write key: send it as the HTTP basic auth user name "
                "(or, without basic auth, as the body's `writeKey`).",
                404: "The Segment endpoints are off: the gateway has no "
                "`RECOFLEET_SEGMENT_WRITE_KEY`.",
            },
        ),
    }.items()
}
SECURITY: list[dict[str, list[str]]] = [{"segmentWriteKey": []}, {}]


def _body(description: str, schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {**raw_json_body(description, schema, example), "security": SECURITY}


def _basic_auth_user(header: str) -> str | None:
    """The user name of a basic `Authorization` header; None when it cannot be read."""
    encoded = header.partition(" ")[2].strip()
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None


def _same(offered: object, expected: str) -> bool:
    return isinstance(offered, str) and hmac.compare_digest(offered.encode(), expected.encode())


def _expected_key(settings: GatewaySettings) -> str:
    """The configured write key; 404 when there is none (the endpoints are off)."""
    if settings.segment_write_key is None:
        raise HTTPException(404, OFF)
    return settings.segment_write_key.get_secret_value()


def _basic_auth(request: Request, expected: str) -> bool:
    """True when basic auth carries the key; False when there is no basic auth; else 401."""
    header = request.headers.get("authorization", "")
    if header.partition(" ")[0].lower() != "basic":
        return False
    if not _same(_basic_auth_user(header), expected):
        raise HTTPException(401, WRONG_KEY, headers=CHALLENGE)
    return True


async def _authorized_body(
    request: Request, settings: GatewaySettings, limiter: RateLimiter
) -> tuple[bytes, Any]:
    """The body of an authorized request and its parsed value (None when not parsed yet).

    Refused in this order, each before any more work: endpoints off (404), wrong basic
    auth (401), rate (429), content type (415), size (413); then, without basic auth, a
    body that does not contain the key (401), is not JSON (400), or names another key (401).
    """
    expected = _expected_key(settings)
    by_header = _basic_auth(request, expected)
    if by_header:
        check_rate(limiter, client_key(request, expected))
    check_media_type(request)
    body = await read_body(request, settings.max_body_bytes, "a Segment call as a JSON object")
    if by_header:
        return body, None
    if expected.encode() not in body:
        raise HTTPException(401, WRONG_KEY, headers=CHALLENGE)
    parsed = _decode(body)
    if not isinstance(parsed, dict) or not _same(parsed.get("writeKey"), expected):
        raise HTTPException(401, WRONG_KEY, headers=CHALLENGE)
    check_rate(limiter, client_key(request, expected))
    return body, parsed


def _decode(body: bytes) -> Any:
    try:
        return decode(body)
    except BodyError as exc:
        raise HTTPException(400, str(exc)) from exc


async def _receive(
    clients: FleetClients, settings: GatewaySettings, traffic: Traffic, body: bytes
) -> JSONResponse:
    summary, status = await publish(clients.ingestion, settings, body, "segment")
    traffic.accepted(summary["accepted"])
    # Segment's clients look for `success`; ours also get the per-event outcome. Like
    # api.segment.io, a batch read in full is a 200 even when no event of it could be
    # used: a library told 422 reports the whole batch failed, links it carried included.
    return JSONResponse({"success": status == 202, **summary}, status_code=200)


def _segment_error(exc: HTTPException) -> JSONResponse:
    """A refusal as Segment's API words one: `code` and `message` beside our `detail`
    (RudderStack's SDK reads `code`; without it, it took a 401 for a network error and
    sent the same batch again and again, holding every later event behind it)."""
    status = HTTPStatus(exc.status_code)
    detail = str(exc.detail)
    return JSONResponse(
        {"detail": detail, "code": status.name.lower(), "message": detail},
        status_code=exc.status_code,
        headers=exc.headers,
    )


@router.post(
    "/batch",
    operation_id="segment_batch",
    summary="Segment HTTP API batch: {'batch': [messages...]}",
    response_model=SegmentAccepted,
    responses=SEGMENT_ERRORS,
    openapi_extra=_body(
        'Segment\'s batch: `{"batch": [messages...]}`.',
        BATCH_SCHEMA,
        {"batch": [TRACK_EXAMPLE]},
    ),
)
async def batch(
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    traffic: TrafficDep,
) -> JSONResponse:
    try:
        body, _ = await _authorized_body(request, settings, limiter)
        return await _receive(clients, settings, traffic, body)
    except HTTPException as exc:
        return _segment_error(exc)


@router.post(
    "/{call}",
    operation_id="segment_call",
    summary="Segment HTTP API single call (track, identify, page, ...)",
    response_model=SegmentAccepted,
    responses={
        **SEGMENT_ERRORS,
        **errors(422, descriptions={422: "The path names no Segment call."}),
    },
    openapi_extra=_body(
        "One Segment message; without a `type` it gets the one the path names.",
        MESSAGE_SCHEMA,
        TRACK_EXAMPLE,
    ),
)
async def single(
    call: SingleCall,
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    traffic: TrafficDep,
) -> JSONResponse:
    try:
        body, message = await _authorized_body(request, settings, limiter)
        if message is None:
            message = _decode(body)
        if not isinstance(message, dict):
            raise HTTPException(400, "a Segment call is one JSON object")
        # The path names the call type; Segment's own API lets the path decide it too.
        message.setdefault("type", call)
        return await _receive(clients, settings, traffic, json.dumps(message).encode())
    except HTTPException as exc:
        return _segment_error(exc)
