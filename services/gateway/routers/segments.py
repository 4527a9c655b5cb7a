"""Segments: the lifecycle segments and those a marketer defines, their sizes and members.

Everything is computed by the profiles service, which owns segments (DESIGN.md); the
gateway checks the key, shapes the answers and streams exports (docs/segments.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from services.common.csv_rows import csv_line
from services.gateway.auth import require
from services.gateway.bodies import model_body, read_model, read_optional_model
from services.gateway.deps import ClientsDep, SettingsDep
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gateway.schemas import (
    SEGMENT_NAME,
    ConditionCountOut,
    ConditionIn,
    DiscoveredOut,
    DiscoverIn,
    SegmentAnswer,
    SegmentDefinitionIn,
    SegmentIn,
    SegmentMemberOut,
    SegmentMembersOut,
    SegmentOut,
    SegmentsOut,
    SuggestedSegmentOut,
)
from services.gen.recofleet.profiles.v1 import profiles_pb2

router = APIRouter(prefix="/v1/segments", tags=["segments"], route_class=AllowingRoute)

SegmentName = Annotated[
    str, Path(pattern=SEGMENT_NAME, max_length=64, description="The segment's name")
]
Channel = Literal["email", "sms", "push", "onsite"]
ChannelQuery = Annotated[
    Channel | None,
    Query(description="Only members who consent to this channel (what a campaign may reach)."),
]
AFTER = "`next_after` of the previous page"
# An export of a million members streams for a while; a page of it must still come quickly.
EXPORT_DEADLINE_S = 3600.0
CSV_COLUMNS = (
    "member_id",
    "lifecycle",
    "recency_days",
    "frequency",
    "monetary",
    "r_score",
    "f_score",
    "m_score",
    "top_category",
    "tags",
)
SEGMENT_LINKS = {
    "members": {
        "operationId": "get_segment_members",
        "parameters": {"name": "$response.body#/name"},
    },
    "export": {"operationId": "export_segment", "parameters": {"name": "$response.body#/name"}},
}
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
}
UNAVAILABLE = {503: "The profiles service is unavailable: nothing was changed, retry."}
NOT_FOUND = {404: "No segment of that name."}
BAD_DEFINITION = {
    422: "The definition is invalid; the detail starts with the field at fault "
    "(`condition: unknown field 'spend' at 1; fields: ...`)."
}
CONFLICT = {
    409: "A lifecycle segment (read only), a name already taken (POST), or as many "
    "segments as allowed."
}


async def _call(method: Any, request: Any, timeout: float) -> Any:
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise _http_error(exc) from exc


def _http_error(exc: grpc.aio.AioRpcError) -> HTTPException:
    status = STATUS.get(exc.code())
    if status is None:
        return HTTPException(
            503, f"profiles unavailable ({exc.code().name}); retry", headers={"Retry-After": "1"}
        )
    return HTTPException(status, exc.details() or exc.code().name)


@router.get(
    "",
    operation_id="list_segments",
    dependencies=[require("profiles:read")],
    response_model=SegmentsOut,
    responses={200: {"description": "Every segment with its size."}, **errors(503)},
)
async def list_segments(clients: ClientsDep, settings: SettingsDep) -> SegmentsOut:
    """The lifecycle segments, then the custom ones, each with its size (counted in one
    pass over every member; at most every `RECOFLEET_PROFILES_SEGMENT_SIZES_TTL_S`)."""
    reply = await _call(
        clients.profiles.ListSegments,
        profiles_pb2.ListSegmentsRequest(),
        settings.deadlines.segments,
    )
    return SegmentsOut(
        segments=[SegmentOut.of(s) for s in reply.segments],
        members=reply.members,
        as_of=reply.as_of.ToDatetime(tzinfo=UTC),
    )


@router.post(
    "",
    operation_id="create_segment",
    dependencies=[require("segments:write")],
    status_code=201,
    response_model=SegmentAnswer,
    responses={
        201: {"description": "The segment as saved, with its size now.", "links": SEGMENT_LINKS},
        **errors(400, 409, 413, 415, 422, 503, descriptions={**BAD_DEFINITION, **CONFLICT}),
    },
    openapi_extra=model_body(SegmentIn, "A new segment: its name, condition and description."),
)
async def create_segment(
    request: Request, clients: ClientsDep, settings: SettingsDep
) -> SegmentAnswer:
    body = await read_model(request, SegmentIn)
    return await _put(clients, settings, body.name, body, create_only=True)


@router.post(
    "/count",
    operation_id="count_condition",
    dependencies=[require("profiles:read")],
    response_model=ConditionCountOut,
    responses={
        200: {"description": "How many members the condition holds for now, per channel."},
        **errors(400, 413, 415, 422, 503, descriptions=BAD_DEFINITION),
    },
    openapi_extra=model_body(ConditionIn, "The condition to count; nothing is saved."),
)
async def count_condition(
    request: Request, clients: ClientsDep, settings: SettingsDep
) -> ConditionCountOut:
    """The size a segment of this condition would have, without saving one: what a
    segment builder shows as its conditions change (one pass over every member)."""
    body = await read_model(request, ConditionIn)
    reply = await _call(
        clients.profiles.CountAudience,
        profiles_pb2.Audience(condition=body.condition),
        settings.deadlines.segments,
    )
    return ConditionCountOut(
        members=reply.members,
        by_channel=dict(reply.by_channel),
        as_of=reply.as_of.ToDatetime(tzinfo=UTC),
    )


def _optional(body: dict[str, Any]) -> dict[str, Any]:
    """A request body the route may go without (its defaults then)."""
    body["requestBody"]["required"] = False
    return body


@router.post(
    "/discover",
    operation_id="discover_segments",
    dependencies=[require("segments:write")],
    response_model=DiscoveredOut,
    responses={
        200: {
            "description": "Segments suggested by clustering the members; nothing is saved: "
            "`PUT /v1/segments/{name}` with a suggestion's `conditions` saves it."
        },
        **errors(
            400,
            409,
            413,
            415,
            422,
            503,
            descriptions={
                409: "Fewer members who ordered (or fewer different ones) than clusters asked.",
                422: "`clusters` or `window_days` out of range (the detail names it).",
            },
        ),
    },
    openapi_extra=_optional(
        model_body(DiscoverIn, 'Optional: `{"clusters": 5}` by default; `window_days` narrows it.')
    ),
)
async def discover_segments(
    request: Request, clients: ClientsDep, settings: SettingsDep
) -> DiscoveredOut:
    """Members who ordered, clustered with k-means on their RFM scores and category shares
    (docs/segment-discovery.md): each cluster described, with a condition that approximates
    it and how well it fits. Reads every portrait once (seconds on a large shop)."""
    body = await read_optional_model(request, DiscoverIn)
    asked = profiles_pb2.DiscoverSegmentsRequest(k=body.clusters)
    if body.window_days is not None:
        asked.window_days = body.window_days
    reply = await _call(clients.profiles.DiscoverSegments, asked, settings.deadlines.segments)
    return DiscoveredOut(
        clusters=[
            SuggestedSegmentOut(
                name=found.name,
                size=found.size,
                share=round(found.share, 4),
                description=found.summary,
                conditions=SegmentDefinitionIn(
                    condition=found.condition, description=found.description
                ),
                precision=found.precision,
                recall=found.recall,
            )
            for found in reply.segments
        ],
        features=list(reply.features),
        members=reply.members,
        clustered=reply.clustered,
        as_of=reply.as_of.ToDatetime(tzinfo=UTC),
    )


@router.get(
    "/{name}",
    operation_id="get_segment",
    dependencies=[require("profiles:read")],
    response_model=SegmentAnswer,
    responses={
        200: {"description": "The segment with its size now.", "links": SEGMENT_LINKS},
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def get_segment(
    name: SegmentName, clients: ClientsDep, settings: SettingsDep
) -> SegmentAnswer:
    reply = await _call(
        clients.profiles.GetSegment,
        profiles_pb2.GetSegmentRequest(name=name),
        settings.deadlines.segments,
    )
    return _answer(reply)


@router.put(
    "/{name}",
    operation_id="put_segment",
    dependencies=[require("segments:write")],
    response_model=SegmentAnswer,
    responses={
        200: {"description": "The segment as saved, with its size now.", "links": SEGMENT_LINKS},
        **errors(400, 409, 413, 415, 422, 503, descriptions={**BAD_DEFINITION, **CONFLICT}),
    },
    openapi_extra=model_body(SegmentDefinitionIn, "The segment's condition and description."),
)
async def put_segment(
    name: SegmentName, request: Request, clients: ClientsDep, settings: SettingsDep
) -> SegmentAnswer:
    """Create the segment, or replace its definition."""
    body = await read_model(request, SegmentDefinitionIn)
    return await _put(clients, settings, name, body, create_only=False)


@router.delete(
    "/{name}",
    operation_id="delete_segment",
    dependencies=[require("segments:write")],
    status_code=204,
    responses={
        204: {"description": "Deleted."},
        **errors(404, 409, 422, 503, descriptions={**NOT_FOUND, 409: "A lifecycle segment."}),
    },
)
async def delete_segment(name: SegmentName, clients: ClientsDep, settings: SettingsDep) -> Response:
    await _call(
        clients.profiles.DeleteSegment,
        profiles_pb2.GetSegmentRequest(name=name),
        settings.deadlines.segments,
    )
    return Response(status_code=204)


@router.get(
    "/{name}/members",
    operation_id="get_segment_members",
    dependencies=[require("profiles:read")],
    response_model=SegmentMembersOut,
    responses={
        200: {
            "description": "One page of the segment's members, by member id.",
            "links": {
                "next": {
                    "operationId": "get_segment_members",
                    "parameters": {
                        "name": "$request.path.name",
                        "after": "$response.body#/next_after",
                    },
                }
            },
        },
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def segment_members(
    name: SegmentName,
    clients: ClientsDep,
    settings: SettingsDep,
    channel: ChannelQuery = None,
    after: Annotated[
        str | None, Query(max_length=128, description="`next_after` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SegmentMembersOut:
    reply = await _call(
        clients.profiles.SegmentMembers,
        profiles_pb2.SegmentMembersRequest(
            name=name, channel=channel or "", after=after or "", limit=limit
        ),
        settings.deadlines.segments,
    )
    return SegmentMembersOut(
        segment=name,
        members=[SegmentMemberOut.of(m) for m in reply.members],
        next_after=reply.next_after or None,
    )


@router.get(
    "/{name}/export",
    operation_id="export_segment",
    dependencies=[require("profiles:read")],
    responses={
        200: {
            "description": "Every member of the segment, streamed: CSV with a header row "
            f"({', '.join(CSV_COLUMNS)}; tags joined by ';') or JSON lines (one member each, "
            "as in /members).",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        },
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def export_segment(
    name: SegmentName,
    clients: ClientsDep,
    channel: ChannelQuery = None,
    format: Literal["csv", "jsonl"] = "csv",
) -> StreamingResponse:
    call = clients.profiles.ExportSegment(
        profiles_pb2.SegmentMembersRequest(name=name, channel=channel or ""),
        timeout=EXPORT_DEADLINE_S,
    )
    pages = aiter(call)
    try:
        # The first page before answering: an unknown segment is a 404, not a cut stream.
        first = await anext(pages, None)
    except grpc.aio.AioRpcError as exc:
        raise _http_error(exc) from exc
    render = _csv_rows if format == "csv" else _json_lines
    suffix, media = ("csv", "text/csv") if format == "csv" else ("jsonl", "application/x-ndjson")
    return StreamingResponse(
        _stream(first, pages, render, header=format == "csv"),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )


async def _stream(
    first: profiles_pb2.SegmentMembersResponse | None,
    pages: AsyncIterator[profiles_pb2.SegmentMembersResponse],
    render: Any,
    *,
    header: bool,
) -> AsyncIterator[str]:
    if header:
        yield csv_line(CSV_COLUMNS)
    if first is not None:
        yield render(first.members)
        async for page in pages:
            yield render(page.members)


def _csv_rows(members: Any) -> str:
    return "".join(
        csv_line(
            (
                m.member_id,
                m.lifecycle,
                m.recency_days if m.HasField("recency_days") else "",
                m.frequency,
                m.monetary,
                m.r_score if m.HasField("r_score") else "",
                m.f_score if m.HasField("f_score") else "",
                m.m_score if m.HasField("m_score") else "",
                m.top_category,
                ";".join(m.tags),
            )
        )
        for m in members
    )


def _json_lines(members: Any) -> str:
    return "".join(
        json.dumps(SegmentMemberOut.of(m).model_dump(mode="json"), ensure_ascii=False) + "\n"
        for m in members
    )


async def _put(
    clients: ClientsDep,
    settings: SettingsDep,
    name: str,
    body: SegmentDefinitionIn,
    *,
    create_only: bool,
) -> SegmentAnswer:
    reply = await _call(
        clients.profiles.PutSegment,
        profiles_pb2.PutSegmentRequest(
            name=name,
            condition=body.condition,
            description=body.description,
            create_only=create_only,
        ),
        settings.deadlines.segments,
    )
    return _answer(reply)


def _answer(reply: profiles_pb2.SegmentResponse) -> SegmentAnswer:
    out = SegmentOut.of(reply.segment)
    return SegmentAnswer(**out.model_dump(), as_of=reply.as_of.ToDatetime(tzinfo=UTC))
