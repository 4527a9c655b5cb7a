"""GA4's Measurement Protocol, so a shop's server-side GA4 sender adds recofleet by
changing the host.

Same path and body as `www.google-analytics.com/mp/collect`: `POST /mp/collect?
measurement_id=...&api_secret=...` with `{"client_id", "user_id", "events": [...]}`. The
`api_secret` is a recofleet access key with `events:write` (the usual headers work too);
`measurement_id` is taken and not needed. As Google's endpoint does, an accepted request
answers `204` with no body. Unlike it, a request whose events were all refused answers
`422` with each reason, because nothing of it was kept (Google answers 2xx whatever it
dropped, and its senders do not read the answer, so the 422 costs them nothing).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from services.gateway.auth import QUERY_KEY, require
from services.gateway.bodies import check_media_type, read_body
from services.gateway.deps import ClientsDep, LimiterDep, SettingsDep, TrafficDep
from services.gateway.responses import errors
from services.gateway.routers.events import (
    INGESTION_ERRORS,
    check_rate,
    client_key,
    publish,
    raw_json_body,
)
from services.gateway.schemas import EventsRefused

router = APIRouter(prefix="/mp", tags=["ga4"])
BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Measurement Protocol body (GA4 reference); the ecommerce events "
    "recofleet maps are in docs/events.md, others are counted as ignored.",
    "properties": {
        "client_id": {"type": "string"},
        "user_id": {"type": "string"},
        "timestamp_micros": {"type": "integer"},
        "consent": {"type": "object"},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "params": {"type": "object"}},
            },
        },
    },
}
EXAMPLE = {
    "client_id": "1234.5678",
    "user_id": "17850",
    "events": [
        {
            "name": "view_item",
            "params": {"currency": "GBP", "items": [{"item_id": "85123A", "price": 2.55}]},
        }
    ],
}


@router.post(
    "/collect",
    operation_id="ga4_collect",
    dependencies=[require("events:write", query=QUERY_KEY)],
    status_code=204,
    summary="GA4 Measurement Protocol: send events as to www.google-analytics.com/mp/collect",
    responses={
        204: {"description": "Some events were accepted (or none was sent, or all were ignored)."},
        **INGESTION_ERRORS,
        **errors(
            422,
            descriptions={422: "No event was accepted: `rejected` says why for each."},
            models={422: EventsRefused},
        ),
    },
    openapi_extra=raw_json_body(
        "A Measurement Protocol body, as Google's endpoint takes it.", BODY_SCHEMA, EXAMPLE
    ),
)
async def collect(
    request: Request,
    clients: ClientsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    traffic: TrafficDep,
    api_secret: Annotated[
        str | None,
        Query(description="A recofleet access key with `events:write` (or send it as a header)"),
    ] = None,
    measurement_id: Annotated[
        str | None, Query(description="The GA4 stream's id: taken, not needed")
    ] = None,
) -> Response:
    check_rate(limiter, client_key(request))
    check_media_type(request)
    body = await read_body(request, settings.max_body_bytes, "a Measurement Protocol body")
    summary, status = await publish(clients.ingestion, settings, body, "ga4")
    traffic.accepted(summary["accepted"])
    if status == 422:
        return JSONResponse(summary, status_code=422)
    return Response(status_code=204)
