"""Request bodies the ingestion endpoints take: which content types, how large, read how.

Accepted content types (anything else is refused with 415 before the body is read):
- none at all, `application/json` and any `application/*+json`;
- `text/plain`: what `navigator.sendBeacon` and Segment's analytics.js send with a JSON
  string, so that browsers skip the CORS preflight; the body is still read as JSON;
- `application/x-ndjson` and `application/jsonl`: JSON lines (`format=google_retail`
  takes newline-delimited UserEvents, the format of its Cloud Storage imports).
A `charset` parameter, when present, must name UTF-8: JSON is UTF-8 (RFC 8259).

Refused, for example: `application/x-www-form-urlencoded` (what a plain `curl -d` sends)
and `multipart/form-data`, whose bodies are not JSON even when they look like it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from services.common.jsonbody import BodyError, decode

Model = TypeVar("Model", bound=BaseModel)
# Definitions and consent changes are small; nothing legitimate comes near this.
SMALL_BODY_BYTES = 64 * 1024

JSON_TYPES = frozenset(
    {"application/json", "text/plain", "application/x-ndjson", "application/jsonl"}
)
ACCEPTED = (
    "application/json, application/*+json, text/plain, application/x-ndjson or application/jsonl"
)
_UTF8 = frozenset({"utf-8", "utf8"})


def media_type_refusal(content_type: str | None) -> str | None:
    """Why a body of this `Content-Type` is refused, or None when it is read as JSON."""
    if content_type is None or not content_type.strip():
        return None
    mime, *params = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    if not (mime in JSON_TYPES or (mime.startswith("application/") and mime.endswith("+json"))):
        return (
            f"content type '{mime}' is not accepted: send JSON as {ACCEPTED} "
            "(with curl: -H 'content-type: application/json')"
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset":
            continue
        charset = value.strip().strip('"').lower()
        if charset not in _UTF8:
            return f"charset '{charset}' is not accepted: JSON bodies are UTF-8 (charset=utf-8)"
    return None


def check_media_type(request: Request) -> None:
    """Refuse with 415 a body whose content type says it is not JSON."""
    refusal = media_type_refusal(request.headers.get("content-type"))
    if refusal:
        raise HTTPException(415, refusal)


async def read_body(request: Request, limit: int, expected: str = "JSON") -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading it all.

    `expected` names what to send instead of an empty body (400)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    if not body:
        raise HTTPException(400, f"empty body: send {expected}")
    return bytes(body)


async def read_optional_model(request: Request, model: type[Model]) -> Model:
    """The body as `model`, or the model's defaults when the request has no body at all
    (neither a length above 0 nor a chunked one)."""
    declared = request.headers.get("content-length")
    chunked = "transfer-encoding" in request.headers
    if declared == "0" or (declared is None and not chunked):
        return model()
    return await read_model(request, model)


async def read_model(request: Request, model: type[Model], limit: int = SMALL_BODY_BYTES) -> Model:
    """The body as `model`: 415, 413 and 400 as for events (the same strict JSON decoder),
    422 naming each field that is wrong."""
    check_media_type(request)
    value = decode_or_400(await read_body(request, limit, "a JSON object"))
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise HTTPException(422, "; ".join(problems)) from None


def decode_or_400(body: bytes) -> Any:
    try:
        return decode(body)
    except BodyError as exc:
        raise HTTPException(400, str(exc)) from None


def model_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """The `requestBody` of a route that reads `model` itself (with `read_model`)."""
    return {
        "requestBody": {
            "required": True,
            "description": f"{description} Content types: {ACCEPTED} (or none).",
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
