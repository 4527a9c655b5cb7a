"""gRPC face of campaigns: the desk's answers as messages, its errors as status codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TypeAlias, TypeVar

import grpc

from services.campaigns.campaign_store import StoredCampaign
from services.campaigns.desk import CampaignDesk, Given, NotAllowed, UnknownCampaign
from services.campaigns.model import DefinitionError
from services.campaigns.offers import why_not_live
from services.campaigns.peers import AnalyticsOutcomes, AudienceError
from services.campaigns.reporting import campaign_report
from services.campaigns.settings import CampaignsSettings
from services.campaigns.templates import TEMPLATES, UnknownTemplate
from services.common.timestamps import timestamp as _ts
from services.gen.recofleet.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

T = TypeVar("T")
Context: TypeAlias = grpc.aio.ServicerContext
# Apply rules for gateways of the previous release (MerchandisingService.ApplyRules now).
ApplyRules = Callable[
    [campaigns_pb2.ApplyRulesRequest, Context], Awaitable[campaigns_pb2.ApplyRulesResponse]
]


class CampaignsServicer(campaigns_pb2_grpc.CampaignsServiceServicer):
    def __init__(
        self,
        desk: CampaignDesk,
        outcomes: AnalyticsOutcomes,
        settings: CampaignsSettings,
        apply_rules: ApplyRules,
    ) -> None:
        self._desk = desk
        self._outcomes = outcomes
        self._settings = settings
        self._apply_rules = apply_rules

    async def ApplyRules(
        self, request: campaigns_pb2.ApplyRulesRequest, context: Context
    ) -> campaigns_pb2.ApplyRulesResponse:
        return await self._apply_rules(request, context)

    async def GetOffers(
        self, request: campaigns_pb2.GetOffersRequest, context: Context
    ) -> campaigns_pb2.GetOffersResponse:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        offered = await _guarded(
            context, self._desk.offers(request.member_id, request.channel, request.preview)
        )
        return campaigns_pb2.GetOffersResponse(
            offers=[offer_proto(g) for g in offered.given], withheld=offered.withheld
        )

    async def CreateCampaign(
        self, request: campaigns_pb2.CreateCampaignRequest, context: Context
    ) -> campaigns_pb2.Campaign:
        created = await _guarded(
            context,
            asyncio.to_thread(self._desk.create, request.definition_json, request.template),
        )
        return self._campaign(created)

    async def GetCampaign(
        self, request: campaigns_pb2.GetCampaignRequest, context: Context
    ) -> campaigns_pb2.Campaign:
        found = await _guarded(context, asyncio.to_thread(self._desk.get, request.campaign_id))
        return self._campaign(found)

    async def ListCampaigns(
        self, request: campaigns_pb2.ListCampaignsRequest, context: Context
    ) -> campaigns_pb2.ListCampaignsResponse:
        await asyncio.to_thread(self._desk.refresh)
        found = [
            c for c in self._desk.campaigns if not request.status or c.status == request.status
        ]
        found.sort(key=lambda c: c.created_at)
        return campaigns_pb2.ListCampaignsResponse(campaigns=[self._campaign(c) for c in found])

    async def UpdateCampaign(
        self, request: campaigns_pb2.UpdateCampaignRequest, context: Context
    ) -> campaigns_pb2.Campaign:
        changed = await _guarded(
            context,
            asyncio.to_thread(self._desk.replace, request.campaign_id, request.definition_json),
        )
        return self._campaign(changed)

    async def ChangeCampaign(
        self, request: campaigns_pb2.ChangeCampaignRequest, context: Context
    ) -> campaigns_pb2.Campaign:
        changed = await _guarded(
            context, asyncio.to_thread(self._desk.change, request.campaign_id, request.action)
        )
        return self._campaign(changed)

    async def DeleteCampaign(
        self, request: campaigns_pb2.GetCampaignRequest, context: Context
    ) -> campaigns_pb2.DeleteCampaignResponse:
        await _guarded(context, asyncio.to_thread(self._desk.delete, request.campaign_id))
        return campaigns_pb2.DeleteCampaignResponse()

    async def GetAudience(
        self, request: campaigns_pb2.GetCampaignRequest, context: Context
    ) -> campaigns_pb2.AudienceSize:
        members, by_channel, as_of = await _guarded(
            context, self._desk.audience(request.campaign_id)
        )
        found = self._desk.get(request.campaign_id)
        return campaigns_pb2.AudienceSize(
            campaign_id=request.campaign_id,
            members=members,
            by_channel=by_channel,
            control_share=found.definition.control_share,
            as_of=_ts(as_of),
        )

    async def ExportCampaign(
        self, request: campaigns_pb2.ExportCampaignRequest, context: Context
    ) -> AsyncIterator[campaigns_pb2.ExportPage]:
        pages = self._desk.export(request.campaign_id, request.channel, request.preview)
        while True:
            page = await _guarded(context, anext(pages, None))
            if page is None:
                return
            yield campaigns_pb2.ExportPage(
                rows=[row_proto(g, request.channel, after) for g, after in page.given],
                skipped=page.skipped,
            )

    async def GetCampaignReport(
        self, request: campaigns_pb2.CampaignReportRequest, context: Context
    ) -> campaigns_pb2.CampaignReport:
        confidence = request.confidence or 0.95
        found = await _guarded(context, asyncio.to_thread(self._desk.get, request.campaign_id))
        members, _, _ = await _guarded(context, self._desk.audience(request.campaign_id))
        counts = await asyncio.to_thread(self._desk.exposure_counts, request.campaign_id)
        outcomes = await _guarded(
            context,
            self._outcomes.outcomes(
                request.campaign_id, confidence, self._settings.outcome_window_days
            ),
        )
        return campaign_report(
            found, members, counts, self._desk.spent(found.campaign_id), outcomes, confidence
        )

    async def ListTemplates(
        self, request: campaigns_pb2.ListTemplatesRequest, context: Context
    ) -> campaigns_pb2.ListTemplatesResponse:
        return campaigns_pb2.ListTemplatesResponse(
            templates=[
                campaigns_pb2.Template(
                    name=t.name,
                    description=t.description,
                    defaults_json=json.dumps(t.defaults),
                    required=list(t.required),
                )
                for t in TEMPLATES.values()
            ]
        )

    def _campaign(self, found: StoredCampaign) -> campaigns_pb2.Campaign:
        spent = self._desk.spent(found.campaign_id)
        reason = why_not_live(found, spent, self._desk.now())
        return campaigns_pb2.Campaign(
            campaign_id=found.campaign_id,
            name=found.definition.name,
            status=found.status,
            definition_json=found.definition.model_dump_json(),
            created_at=_ts(found.created_at),
            updated_at=_ts(found.updated_at),
            redemptions=spent.redemptions,
            cost=spent.cost,
            live=not reason,
            not_live_reason=reason,
        )


async def _guarded(context: Context, work: Awaitable[T]) -> T:
    """The work's result, or the call aborted with the status its error means."""
    try:
        return await work
    except (DefinitionError, AudienceError) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except UnknownTemplate as exc:
        names = ", ".join(TEMPLATES)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"template: no template {exc}; one of {names}"
        )
    except UnknownCampaign as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no campaign {exc}")
    except NotAllowed as exc:
        code = grpc.StatusCode.INVALID_ARGUMENT
        if not str(exc).startswith(("channel:", "action:")):
            code = grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(exc))
    except grpc.aio.AioRpcError as exc:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"a service campaigns needs: {exc.details()}"
        )
    raise AssertionError("unreachable: abort raises")


def offer_proto(given: Given) -> campaigns_pb2.Offer:
    definition, tier, exposure = given.definition, given.tier, given.exposure
    return campaigns_pb2.Offer(
        offer_id=exposure.offer_id,
        campaign_id=exposure.campaign_id,
        campaign_name=definition.name,
        title=definition.title(tier),
        description=definition.description_for(tier),
        coupon_code=exposure.coupon_code,
        discount_percent=_percent(given),
        discount_amount=_amount(given),
        minimum_spend=definition.offer.minimum_spend,
        channels=list(definition.channels),
        channel=exposure.channel,
        tier=exposure.tier,
        priority=definition.priority,
        expires_at=_ts(given.expires_at) if given.expires_at else None,
    )


def row_proto(given: Given, channel: str, send_after: datetime | None) -> campaigns_pb2.ExportRow:
    definition, tier, exposure = given.definition, given.tier, given.exposure
    return campaigns_pb2.ExportRow(
        member_id=exposure.member_id,
        channel=channel,
        coupon_code=exposure.coupon_code,
        title=definition.title(tier),
        description=definition.description_for(tier),
        discount_percent=_percent(given),
        discount_amount=_amount(given),
        minimum_spend=definition.offer.minimum_spend,
        tier=exposure.tier,
        expires_at=_ts(given.expires_at) if given.expires_at else None,
        send_after=_ts(send_after) if send_after else None,
    )


def _percent(given: Given) -> float:
    return given.definition.offer.discount(given.tier)[0] or 0.0


def _amount(given: Given) -> float:
    return given.definition.offer.discount(given.tier)[1] or 0.0
