"""Campaigns: who gets which offer on which channel, exports for the senders, reports.

The campaigns service owns campaigns (DESIGN.md): it validates a definition (a wrong field
comes back named, as a 422), applies the templates, caps and control groups, and assembles
the report with analytics. The gateway checks the key and shapes the answers
(docs/campaigns.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from services.campaigns.exports import EXPORT_COLUMNS, export_row
from services.campaigns.model import CampaignDefinition
from services.common.csv_rows import csv_line
from services.gateway.access_keys import Scope
from services.gateway.auth import require
from services.gateway.bodies import SMALL_BODY_BYTES, check_media_type, decode_or_400, read_body
from services.gateway.calls import call, refusal
from services.gateway.deps import ClientsDep
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], route_class=AllowingRoute)

# An audience is counted over every profile: seconds on a large shop.
DEADLINE_S = 30.0
EXPORT_DEADLINE_S = 3600.0
SCOPE: Scope = "campaigns:write"
Channel = Literal["email", "sms", "push", "onsite"]
TemplateName = Literal["welcome", "spend-tier", "seasonal", "win-back", "vip"]
CampaignId = Annotated[
    str, Path(pattern=r"^[0-9A-Za-z._-]+$", max_length=64, description="The campaign's id")
]
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
}
NOT_FOUND = {404: "No campaign with that id."}
UNAVAILABLE = {503: "Campaigns (or profiles, or analytics) is unavailable: retry."}


class CampaignOut(BaseModel):
    campaign_id: str
    name: str
    status: Literal["draft", "active", "paused", "ended"]
    definition: dict[str, Any] = Field(description="The whole definition, defaults filled in.")
    created_at: datetime
    updated_at: datetime
    redemptions: int
    cost: float = Field(description="Discounts granted on redeemed orders so far.")
    live: bool = Field(description="Whether its status, schedule and budget let it run now.")
    not_live_reason: str | None

    @classmethod
    def of(cls, c: campaigns_pb2.Campaign) -> CampaignOut:
        return cls(
            campaign_id=c.campaign_id,
            name=c.name,
            status=c.status,  # type: ignore[arg-type]
            definition=json.loads(c.definition_json),
            created_at=c.created_at.ToDatetime(tzinfo=UTC),
            updated_at=c.updated_at.ToDatetime(tzinfo=UTC),
            redemptions=c.redemptions,
            cost=round(c.cost, 2),
            live=c.live,
            not_live_reason=c.not_live_reason or None,
        )


class CampaignsOut(BaseModel):
    campaigns: list[CampaignOut] = Field(description="Oldest first.")


class TemplateOut(BaseModel):
    name: str
    description: str
    defaults: dict[str, Any]
    required: list[str] = Field(description="Fields the body must give besides `name`.")


class TemplatesOut(BaseModel):
    templates: list[TemplateOut]


class AudienceOut(BaseModel):
    campaign_id: str
    members: int = Field(description="Members the audience holds now, before channel consent.")
    by_channel: dict[str, int] = Field(description="Of them, those who consent to each channel.")
    control_share: float = Field(description="The share the control group holds out, by hash.")
    as_of: datetime


class FigureOut(BaseModel):
    value: float | None = Field(description="null when it cannot be computed (no members).")
    low: float | None = Field(description="null when too few members give no interval.")
    high: float | None
    n: int

    @classmethod
    def of(cls, f: campaigns_pb2.Figure) -> FigureOut:
        return cls(value=finite(f.value), low=finite(f.low), high=finite(f.high), n=f.n)


def finite(value: float) -> float | None:
    """A figure as JSON can carry it: NaN and infinities (an interval of one member) are
    null, never a number they are not."""
    return value if math.isfinite(value) else None


class GroupOut(BaseModel):
    group: Literal["treatment", "control"]
    members: int
    converters: int
    conversion_rate: FigureOut
    revenue_per_member: FigureOut
    revenue: float


class ReportOut(BaseModel):
    campaign_id: str
    name: str
    audience: int
    exposures: dict[str, int] = Field(description="Per channel, offers shown or sent.")
    members_exposed: int
    members_held_out: int
    redemptions: int
    redemption_rate: FigureOut = Field(description="Redemptions over members exposed.")
    redeemed_revenue: float
    cost: float
    groups: list[GroupOut]
    conversion_uplift: FigureOut = Field(description="Treatment minus control, with its interval.")
    conversion_p_value: float | None
    revenue_per_member_uplift: FigureOut
    revenue_p_value: float | None
    incremental_revenue: float | None
    roi: float | None = Field(description="(incremental revenue - cost) / cost.")
    method: str
    confidence: float
    warnings: list[str]
    as_of: str

    @classmethod
    def of(cls, r: campaigns_pb2.CampaignReport) -> ReportOut:
        return cls(
            campaign_id=r.campaign_id,
            name=r.name,
            audience=r.audience,
            exposures=dict(r.exposures),
            members_exposed=r.members_exposed,
            members_held_out=r.members_held_out,
            redemptions=r.redemptions,
            redemption_rate=FigureOut.of(r.redemption_rate),
            redeemed_revenue=r.redeemed_revenue,
            cost=r.cost,
            groups=[
                GroupOut(
                    group=g.group,  # type: ignore[arg-type]
                    members=g.members,
                    converters=g.converters,
                    conversion_rate=FigureOut.of(g.conversion_rate),
                    revenue_per_member=FigureOut.of(g.revenue_per_member),
                    revenue=finite(g.revenue) or 0.0,
                )
                for g in r.groups
            ],
            conversion_uplift=FigureOut.of(r.conversion_uplift),
            conversion_p_value=finite(r.conversion_p_value),
            revenue_per_member_uplift=FigureOut.of(r.revenue_per_member_uplift),
            revenue_p_value=finite(r.revenue_p_value),
            incremental_revenue=finite(r.incremental_revenue),
            roi=finite(r.roi) if r.HasField("roi") else None,
            method=r.method,
            confidence=r.confidence,
            warnings=list(r.warnings),
            as_of=r.as_of,
        )


async def _call(method: Any, request: Any) -> Any:
    return await call(method, request, timeout=DEADLINE_S, statuses=STATUS, service="campaigns")


async def _definition(request: Request) -> str:
    """The body, checked to be JSON here and validated by campaigns (which names fields)."""
    check_media_type(request)
    body = decode_or_400(await read_body(request, SMALL_BODY_BYTES, "a JSON object"))
    if not isinstance(body, dict):
        raise HTTPException(422, "body: a JSON object")
    return json.dumps(body)


DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "description": "The campaign (docs/campaigns.md); with `?template=`, only what differs "
        'from the template, at least `{"name": "..."}` (the seasonal one also `category`).',
        "content": {"application/json": {"schema": CampaignDefinition.model_json_schema()}},
    }
}


@router.post(
    "",
    operation_id="create_campaign",
    dependencies=[require(SCOPE)],
    status_code=201,
    response_model=CampaignOut,
    responses={
        201: {"description": "The campaign; `GET .../audience` says who it reaches."},
        **errors(400, 413, 415, 422, 503, descriptions=UNAVAILABLE),
    },
    openapi_extra=DEFINITION_BODY,
)
async def create_campaign(
    request: Request,
    clients: ClientsDep,
    template: Annotated[
        TemplateName | None, Query(description="Start from a shipped template.")
    ] = None,
) -> CampaignOut:
    message = campaigns_pb2.CreateCampaignRequest(
        definition_json=await _definition(request), template=template or ""
    )
    return CampaignOut.of(await _call(clients.campaigns.CreateCampaign, message))


@router.get(
    "",
    operation_id="list_campaigns",
    dependencies=[require(SCOPE)],
    response_model=CampaignsOut,
    responses={200: {"description": "The campaigns."}, **errors(422, 503)},
)
async def list_campaigns(
    clients: ClientsDep,
    status: Literal["draft", "active", "paused", "ended"] | None = None,
) -> CampaignsOut:
    request = campaigns_pb2.ListCampaignsRequest(status=status or "")
    reply = await _call(clients.campaigns.ListCampaigns, request)
    return CampaignsOut(campaigns=[CampaignOut.of(c) for c in reply.campaigns])


@router.get(
    "/templates",
    operation_id="list_campaign_templates",
    dependencies=[require(SCOPE)],
    response_model=TemplatesOut,
    responses={200: {"description": "The shipped templates with their defaults."}, **errors(503)},
)
async def list_templates(clients: ClientsDep) -> TemplatesOut:
    reply = await _call(clients.campaigns.ListTemplates, campaigns_pb2.ListTemplatesRequest())
    return TemplatesOut(
        templates=[
            TemplateOut(
                name=t.name,
                description=t.description,
                defaults=json.loads(t.defaults_json),
                required=list(t.required),
            )
            for t in reply.templates
        ]
    )


@router.get(
    "/{campaign_id}",
    operation_id="get_campaign",
    dependencies=[require(SCOPE)],
    response_model=CampaignOut,
    responses={
        200: {"description": "The campaign."},
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def get_campaign(campaign_id: CampaignId, clients: ClientsDep) -> CampaignOut:
    request = campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id)
    return CampaignOut.of(await _call(clients.campaigns.GetCampaign, request))


@router.put(
    "/{campaign_id}",
    operation_id="replace_campaign",
    dependencies=[require(SCOPE)],
    response_model=CampaignOut,
    responses={
        200: {"description": "The campaign with its new definition, in effect within a second."},
        **errors(400, 404, 413, 415, 422, 503, descriptions=NOT_FOUND),
    },
    openapi_extra=DEFINITION_BODY,
)
async def replace_campaign(
    campaign_id: CampaignId, request: Request, clients: ClientsDep
) -> CampaignOut:
    message = campaigns_pb2.UpdateCampaignRequest(
        campaign_id=campaign_id, definition_json=await _definition(request)
    )
    return CampaignOut.of(await _call(clients.campaigns.UpdateCampaign, message))


@router.delete(
    "/{campaign_id}",
    operation_id="delete_campaign",
    dependencies=[require(SCOPE)],
    status_code=204,
    responses={204: {"description": "Deleted."}, **errors(404, 422, 503, descriptions=NOT_FOUND)},
)
async def delete_campaign(campaign_id: CampaignId, clients: ClientsDep) -> Response:
    request = campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id)
    await _call(clients.campaigns.DeleteCampaign, request)
    return Response(status_code=204)


def _transition(action: Literal["activate", "pause", "end"], summary: str) -> None:
    async def change(campaign_id: CampaignId, clients: ClientsDep) -> CampaignOut:
        message = campaigns_pb2.ChangeCampaignRequest(campaign_id=campaign_id, action=action)
        return CampaignOut.of(await _call(clients.campaigns.ChangeCampaign, message))

    change.__doc__ = summary
    router.post(
        f"/{{campaign_id}}/{action}",
        operation_id=f"{action}_campaign",
        dependencies=[require(SCOPE)],
        response_model=CampaignOut,
        responses={
            200: {"description": "The campaign after the change, in effect within a second."},
            **errors(
                404,
                409,
                422,
                503,
                descriptions={**NOT_FOUND, 409: "Not allowed from the campaign's status."},
            ),
        },
    )(change)


_transition("activate", "Start offering it (from a draft, or again after a pause).")
_transition("pause", "Stop offering it for now; its counters and codes stay.")
_transition("end", "End it for good.")


@router.get(
    "/{campaign_id}/audience",
    operation_id="get_campaign_audience",
    dependencies=[require(SCOPE)],
    response_model=AudienceOut,
    responses={
        200: {"description": "How many members it reaches now, per channel."},
        **errors(404, 422, 503, descriptions={**NOT_FOUND, 422: "The audience is wrong."}),
    },
)
async def get_audience(campaign_id: CampaignId, clients: ClientsDep) -> AudienceOut:
    request = campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id)
    reply = await _call(clients.campaigns.GetAudience, request)
    return AudienceOut(
        campaign_id=reply.campaign_id,
        members=reply.members,
        by_channel=dict(reply.by_channel),
        control_share=reply.control_share,
        as_of=reply.as_of.ToDatetime(tzinfo=UTC),
    )


@router.post(
    "/{campaign_id}/export",
    operation_id="export_campaign",
    dependencies=[require(SCOPE)],
    responses={
        200: {
            "description": "The channel's audience with their offers and codes, streamed as CSV "
            f"({', '.join(EXPORT_COLUMNS)}). Caps and consent are checked now; each row is "
            "recorded as an exposure and published for the senders, unless `preview`.",
            "content": {"text/csv": {}},
        },
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def export_campaign(
    campaign_id: CampaignId,
    clients: ClientsDep,
    channel: Channel,
    preview: bool = False,
) -> StreamingResponse:
    request = campaigns_pb2.ExportCampaignRequest(
        campaign_id=campaign_id, channel=channel, preview=preview
    )
    pages = aiter(clients.campaigns.ExportCampaign(request, timeout=EXPORT_DEADLINE_S))
    try:
        # The first page before answering: an unknown campaign is a 404, not a cut stream.
        first = await anext(pages, None)
    except grpc.aio.AioRpcError as exc:
        raise refusal(exc, STATUS, "campaigns") from exc
    return StreamingResponse(
        _export_lines(first, pages),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{campaign_id}-{channel}.csv"'},
    )


async def _export_lines(
    first: campaigns_pb2.ExportPage | None, pages: AsyncIterator[campaigns_pb2.ExportPage]
) -> AsyncIterator[str]:
    yield csv_line(EXPORT_COLUMNS)
    if first is None:
        return
    yield export_rows(first)
    async for page in pages:
        yield export_rows(page)


def export_rows(page: campaigns_pb2.ExportPage) -> str:
    return "".join(csv_line(export_row(r)) for r in page.rows)


@router.get(
    "/{campaign_id}/report",
    operation_id="get_campaign_report",
    dependencies=[require(SCOPE)],
    response_model=ReportOut,
    responses={
        200: {
            "description": "Exposures, redemptions, revenue, and the uplift against the "
            "held-out control group with its interval, the method named, and ROI."
        },
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def get_report(
    campaign_id: CampaignId,
    clients: ClientsDep,
    confidence: Annotated[float, Query(ge=0.5, le=0.999)] = 0.95,
) -> ReportOut:
    request = campaigns_pb2.CampaignReportRequest(campaign_id=campaign_id, confidence=confidence)
    return ReportOut.of(await _call(clients.campaigns.GetCampaignReport, request))
