"""The services campaigns asks: profiles for audiences, analytics for a campaign's outcomes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from services.campaigns.desk import AudienceError, Matched
from services.campaigns.model import Audience
from services.campaigns.offers import Member
from services.gen.recofleet.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.gen.recofleet.profiles.v1 import profiles_pb2, profiles_pb2_grpc

EXPORT_PAGE = 500


class ProfilesPortraits:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = profiles_pb2_grpc.ProfilesServiceStub(channel)
        self._deadline_s = deadline_s

    async def match(self, member_id: str, audiences: Sequence[Audience]) -> Matched:
        request = profiles_pb2.MatchAudiencesRequest(
            member_id=member_id, audiences=[_audience(a) for a in audiences]
        )
        reply = await self._call(self._stub.MatchAudiences, request)
        member = member_of(reply.member, reply.preferred_channel)
        return Matched(reply.known, member, list(reply.matched))

    async def count(self, audience: Audience) -> tuple[int, dict[str, int], datetime]:
        reply = await self._call(self._stub.CountAudience, _audience(audience), scan=True)
        return reply.members, dict(reply.by_channel), reply.as_of.ToDatetime(tzinfo=UTC)

    async def pages(self, audience: Audience, channel: str) -> AsyncIterator[list[Member]]:
        after = ""
        while True:
            request = profiles_pb2.AudienceMembersRequest(
                audience=_audience(audience), channel=channel, after=after, limit=EXPORT_PAGE
            )
            reply = await self._call(self._stub.AudienceMembers, request, scan=True)
            if reply.members:
                yield [member_of(m) for m in reply.members]
            if not reply.next_after:
                return
            after = reply.next_after

    async def _call(
        self, method: Callable[..., Awaitable[Any]], request: Any, scan: bool = False
    ) -> Any:
        # A scan of every profile takes seconds on a large shop; one member's match does not.
        timeout = self._deadline_s * (60 if scan else 1)
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise AudienceError(f"audience.{exc.details()}") from None
            raise


def _audience(audience: Audience) -> profiles_pb2.Audience:
    return profiles_pb2.Audience(segments=audience.segments, condition=audience.condition)


def member_of(found: profiles_pb2.SegmentMember, preferred_channel: str = "") -> Member:
    consent = found.consent
    return Member(
        member_id=found.member_id,
        known=True,
        consent={
            "personalization": consent.personalization,
            "email": consent.email,
            "sms": consent.sms,
            "push": consent.push,
            "onsite": consent.onsite,
        },
        m_score=found.m_score if found.HasField("m_score") else None,
        spend=found.monetary,
        preferred_channel=preferred_channel,
    )


class AnalyticsOutcomes:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        self._deadline_s = deadline_s

    async def outcomes(
        self, campaign_id: str, confidence: float, window_days: float
    ) -> analytics_pb2.CampaignOutcomes:
        request = analytics_pb2.CampaignOutcomesRequest(
            campaign_id=campaign_id, confidence=confidence, window_days=window_days
        )
        reply: analytics_pb2.CampaignOutcomes = await self._stub.GetCampaignOutcomes(
            request, timeout=self._deadline_s * 10
        )
        return reply
