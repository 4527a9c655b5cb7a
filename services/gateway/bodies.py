"""Request bodies the ingestion endpoints take: which content types, how large, read how.

Accepted content types (anything else is refused with 415 before the body is read):
- none at all, `application/json` and any `application/*+json`;
- `text/plain`: what `navigator.sendBeacon` and Segment's analytics.js send with a JSON
  string, so that browsers skip the CORS preflight; the body is still read as JSON;
- `application/x-ndjson` and `application/jsonl`: JSON lines (`format=google_retail`
  takes newline-delimited UserEvents, the format of its Cloud Storage imports).
A `charset` parameter, when present, must name UTF-8: JSON is UTF-8 (RFC 8259).

Refused, for example: `application/x-www-form-urlencoded` (what a plain `curl -d` sends)
and `multipart/form-data`, whose bodies are not JSON even when they look like it; and any
`Content-Encoding` but `identity` and `gzip` (a gzip body is expanded up to the size limit
and no further: a bomb is refused with 413, not expanded).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from services.common.jsonbody import BodyError, decode

Model = TypeVar("Model", bound=BaseModel)
# Definitions and consent changes are small; nothing legitimate comes near this.
SMALL_BODY_BYTES = 64 * 1024
# How long a body may pause between two of its chunks (an app made without settings).
DEFAULT_IDLE_TIMEOUT_S = 10.0
# Content-Encoding values taken: Segment's libraries may gzip their batches.
ENCODINGS = frozenset({"", "identity", "gzip"})

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
    """The request body, refused with 413 past `limit` bytes without reading it all (a gzip
    body: also once expanded), with 415 when it is compressed other than by gzip, and with
    408 when it stops arriving for the gateway's
    `body_idle_timeout_s` (a client that announces 1,000 bytes and sends 8 would hold its
    connection, and the memory of its request, for ever).

    `expected` names what to send instead of an empty body (400)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise HTTPException(
            415,
            f"content encoding '{encoding}' is not accepted: send the body uncompressed "
            "or gzip-compressed",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    idle_s = _idle_timeout_s(request)
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise HTTPException(
                408, f"the body stopped arriving: nothing for {idle_s:g} s, {len(body)} bytes read"
            ) from None
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    if encoding == "gzip":
        body = _gunzipped(body, limit)
    if not body:
        raise HTTPException(400, f"empty body: send {expected}")
    return bytes(body)


def _gunzipped(body: bytearray, limit: int) -> bytearray:
    """A gzip body expanded, refused with 413 once it grows past `limit` (a small bomb
    never expands further than that) and with 400 when it is not gzip."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        expanded = inflater.decompress(bytes(body), limit + 1)
        if not inflater.unconsumed_tail:
            expanded += inflater.flush()
    except zlib.error as exc:
        raise HTTPException(400, f"body is not valid gzip: {exc}") from None
    # Checked after the flush too: what it still holds counts towards the limit.
    if len(expanded) > limit or inflater.unconsumed_tail:
        raise HTTPException(413, f"body exceeds the limit of {limit} bytes once expanded")
    if not inflater.eof:
        raise HTTPException(400, "body is not valid gzip: it ends before the gzip stream does")
    return bytearray(expanded)


def _idle_timeout_s(request: Request) -> float:
    settings = getattr(request.app.state, "settings", None)
    return getattr(settings, "body_idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)


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
