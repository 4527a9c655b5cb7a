"""gRPC face of profiles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

import grpc

from services.common.clock import Clock
from services.common.db import served
from services.common.events import check_member_id
from services.common.members import CHANNELS, CONSENT_KEYS
from services.common.timestamps import timestamp as _ts
from services.gen.recofleet.profiles.v1 import profiles_pb2, profiles_pb2_grpc
from services.profiles.audiences import Audience, AudienceError
from services.profiles.discovery import DEFAULT_TOP_CATEGORIES, Discovery, NotEnoughMembers
from services.profiles.domain import ManualTag
from services.profiles.portrait import Portrait, Portraitist, consent_of
from services.profiles.scoring import Scoring
from services.profiles.segmenting import Segmenter, UnknownSegment
from services.profiles.segments import BuiltinSegment, DefinitionError, SegmentDefinition
from services.profiles.store import (
    ProfileStore,
    SegmentExists,
    TooManySegments,
    TooManyTags,
)
from services.profiles.tags import check_tag

# Clusters when the request names none (as `recofleet segments discover`).
DEFAULT_K = 5


class ProfilesServicer(profiles_pb2_grpc.ProfilesServiceServicer):
    def __init__(
        self,
        store: ProfileStore,
        default_recent: int,
        portraitist: Portraitist,
        clock: Clock,
        segmenter: Segmenter,
    ) -> None:
        self._store = store
        self._default_recent = default_recent
        self._portraitist = portraitist
        self._clock = clock
        self._segmenter = segmenter

    async def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.GetProfileResponse:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        basic = request.view == profiles_pb2.PROFILE_VIEW_BASIC
        limit = request.recent_limit if basic else request.recent_limit or self._default_recent
        # One trip to a worker thread for everything (none on an embedded store): the hops,
        # not the work, dominated.
        profile = await served(
            self._store.embedded, self._profile, request.member_id, limit, not basic
        )
        return profiles_pb2.GetProfileResponse(profile=profile)

    def _profile(self, member_id: str, limit: int, purchases: bool) -> profiles_pb2.Profile:
        profile = self._store.get(member_id, limit, purchases)
        if profile is None:
            choices, at = self._store.consent_choices(member_id)
            consent = consent_of(self._portraitist.consent_defaults, choices)
            return profiles_pb2.Profile(
                member_id=member_id, known=False, consent=consent_proto(consent, at)
            )
        portrait = self._portraitist.draw(profile, self._store.scoring(), self._clock.now())
        return to_proto(portrait, self._segmenter.member_of(portrait))

    async def SetConsent(
        self, request: profiles_pb2.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.SetConsentResponse:
        problem = check_member_id(request.member_id)
        unknown = sorted(set(request.changes) - set(CONSENT_KEYS))
        if problem is None and not request.changes:
            problem = f"no change: give one or more of {', '.join(CONSENT_KEYS)}"
        if problem is None and unknown:
            problem = f"unknown consent {', '.join(unknown)}; known: {', '.join(CONSENT_KEYS)}"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        choices, at = await asyncio.to_thread(
            self._store.set_consent, request.member_id, dict(request.changes), self._clock.now()
        )
        consent = consent_of(self._portraitist.consent_defaults, choices)
        return profiles_pb2.SetConsentResponse(
            member_id=request.member_id, consent=consent_proto(consent, at)
        )

    async def ListSegments(
        self, request: profiles_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.ListSegmentsResponse:
        sizes = await asyncio.to_thread(self._segmenter.sizes)
        book = await asyncio.to_thread(self._segmenter.book)
        trend = await asyncio.to_thread(self._segmenter.trend)
        segments = [segment_proto(d, sizes.sizes.get(d.name, 0)) for d in book.definitions]
        for segment in segments:
            segment.trend.extend(
                profiles_pb2.DailySize(day=day.isoformat(), size=size)
                for day, size in trend.get(segment.name, [])
            )
        return profiles_pb2.ListSegmentsResponse(
            segments=segments,
            as_of=_ts(sizes.as_of),
            members=sizes.members,
        )

    async def GetSegment(
        self, request: profiles_pb2.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.SegmentResponse:
        definition = await self._definition(request.name, context)
        size, at = await asyncio.to_thread(self._segmenter.size_of, definition)
        return profiles_pb2.SegmentResponse(segment=segment_proto(definition, size), as_of=_ts(at))

    async def PutSegment(
        self, request: profiles_pb2.PutSegmentRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.SegmentResponse:
        try:
            saved, size, at = await asyncio.to_thread(
                self._segmenter.put,
                request.name,
                request.condition,
                request.description,
                request.create_only,
            )
        except DefinitionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BuiltinSegment as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except SegmentExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except TooManySegments as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return profiles_pb2.SegmentResponse(segment=segment_proto(saved, size), as_of=_ts(at))

    async def DeleteSegment(
        self, request: profiles_pb2.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.DeleteSegmentResponse:
        try:
            await asyncio.to_thread(self._segmenter.delete, request.name)
        except BuiltinSegment as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except UnknownSegment:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no segment named '{request.name}'")
        return profiles_pb2.DeleteSegmentResponse()

    async def SegmentMembers(
        self, request: profiles_pb2.SegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.SegmentMembersResponse:
        await self._definition(request.name, context)
        await self._check_channel(request.channel, context)
        found, next_after = await asyncio.to_thread(
            self._segmenter.page,
            request.name,
            request.channel or None,
            request.after or None,
            request.limit or 100,
        )
        return profiles_pb2.SegmentMembersResponse(
            members=[member_proto(p) for p in found], next_after=next_after or ""
        )

    async def ExportSegment(
        self, request: profiles_pb2.SegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[profiles_pb2.SegmentMembersResponse]:
        await self._definition(request.name, context)
        await self._check_channel(request.channel, context)
        pages = self._segmenter.export(request.name, request.channel or None)
        while page := await asyncio.to_thread(next, pages, None):
            yield profiles_pb2.SegmentMembersResponse(members=[member_proto(p) for p in page])

    async def CountAudience(
        self, request: profiles_pb2.Audience, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.AudienceCount:
        audience = await self._audience(request, context)
        found, at = await asyncio.to_thread(self._segmenter.count_audience, audience)
        return profiles_pb2.AudienceCount(
            members=found.members, by_channel=found.by_channel, as_of=_ts(at)
        )

    async def AudienceMembers(
        self, request: profiles_pb2.AudienceMembersRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.SegmentMembersResponse:
        audience = await self._audience(request.audience, context)
        await self._check_channel(request.channel, context)
        found, next_after = await asyncio.to_thread(
            self._segmenter.audience_page,
            audience,
            request.channel or None,
            request.after or None,
            request.limit or 100,
        )
        return profiles_pb2.SegmentMembersResponse(
            members=[member_proto(p) for p in found], next_after=next_after or ""
        )

    async def MatchAudiences(
        self, request: profiles_pb2.MatchAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.MatchAudiencesResponse:
        problem = check_member_id(request.member_id)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        # Called per offer request: one hop (none on an embedded store), as GetProfile.
        try:
            return await served(self._store.embedded, self._match, request)
        except AudienceError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    def _match(
        self, request: profiles_pb2.MatchAudiencesRequest
    ) -> profiles_pb2.MatchAudiencesResponse:
        wanted = []
        for n, audience in enumerate(request.audiences):
            try:
                wanted.append(self._segmenter.audience(audience.segments, audience.condition))
            except AudienceError as exc:
                raise AudienceError(f"audiences[{n}].{exc.field}", exc.reason) from None
        match = self._segmenter.match(request.member_id, wanted)
        if match.portrait is None:
            member = profiles_pb2.SegmentMember(
                member_id=request.member_id, consent=consent_proto(match.consent, match.consent_at)
            )
            return profiles_pb2.MatchAudiencesResponse(matched=match.matched, member=member)
        return profiles_pb2.MatchAudiencesResponse(
            matched=match.matched,
            known=True,
            member=member_proto(match.portrait),
            preferred_channel=match.portrait.preferred_channel or "",
        )

    async def CountMembers(
        self, request: profiles_pb2.CountMembersRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.MemberCount:
        now = self._clock.now()
        counted = await served(self._store.embedded, self._store.count_members)
        return profiles_pb2.MemberCount(members=counted, as_of=_ts(now))

    async def DiscoverSegments(
        self, request: profiles_pb2.DiscoverSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.DiscoverSegmentsResponse:
        top = request.top_categories if request.HasField("top_categories") else None
        window = request.window_days if request.HasField("window_days") else None
        try:
            # Seconds of CPU on a large store: off the event loop.
            found, at = await asyncio.to_thread(
                self._segmenter.discover,
                request.k or DEFAULT_K,
                DEFAULT_TOP_CATEGORIES if top is None else top,
                window,
            )
        except NotEnoughMembers as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        return discovery_proto(found, at)

    async def _audience(
        self, audience: profiles_pb2.Audience, context: grpc.aio.ServicerContext
    ) -> Audience:
        try:
            return await asyncio.to_thread(
                self._segmenter.audience, audience.segments, audience.condition
            )
        except AudienceError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    async def _definition(self, name: str, context: grpc.aio.ServicerContext) -> SegmentDefinition:
        try:
            return await asyncio.to_thread(self._segmenter.definition, name)
        except UnknownSegment:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no segment named '{name}'")
            raise

    @staticmethod
    async def _check_channel(channel: str, context: grpc.aio.ServicerContext) -> None:
        if channel and channel not in CHANNELS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"channel: one of {', '.join(CHANNELS)}; not '{channel}'",
            )

    async def RecomputeScores(
        self, request: profiles_pb2.RecomputeScoresRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.RecomputeScoresResponse:
        scoring = await asyncio.to_thread(self._store.recompute_scoring, self._clock.now())
        return profiles_pb2.RecomputeScoresResponse(scoring=scoring_proto(scoring))

    async def SetManualTag(
        self, request: profiles_pb2.ManualTagRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.ManualTagsResponse:
        await self._check(request, context)
        try:
            tags = await asyncio.to_thread(
                self._store.set_manual_tag, request.member_id, request.tag, self._clock.now()
            )
        except TooManyTags as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return await self._tags(request.member_id, tags, context)

    async def RemoveManualTag(
        self, request: profiles_pb2.ManualTagRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.ManualTagsResponse:
        await self._check(request, context)
        tags = await asyncio.to_thread(
            self._store.remove_manual_tag, request.member_id, request.tag
        )
        return await self._tags(request.member_id, tags, context)

    @staticmethod
    async def _check(
        request: profiles_pb2.ManualTagRequest, context: grpc.aio.ServicerContext
    ) -> None:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        problem = check_tag(request.tag)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"tag: {problem}")

    @staticmethod
    async def _tags(
        member_id: str, tags: list[ManualTag] | None, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.ManualTagsResponse:
        if tags is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no events seen for member '{member_id}'"
            )
        return profiles_pb2.ManualTagsResponse(
            member_id=member_id, tags=[_manual(t) for t in tags or []]
        )


def _manual(tag: ManualTag) -> profiles_pb2.Tag:
    return profiles_pb2.Tag(tag=tag.tag, source="manual", set_at=_ts(tag.set_at))


def consent_proto(consent: Mapping[str, bool], at: datetime | None) -> profiles_pb2.Consent:
    message = profiles_pb2.Consent(
        personalization=consent["personalization"],
        email=consent["email"],
        sms=consent["sms"],
        push=consent["push"],
        onsite=consent["onsite"],
    )
    if at is not None:
        message.updated_at.CopyFrom(_ts(at))
    return message


def discovery_proto(found: Discovery, at: datetime) -> profiles_pb2.DiscoverSegmentsResponse:
    segments = []
    for cluster in found.clusters:
        definition = cluster.definition(found)
        segments.append(
            profiles_pb2.DiscoveredSegment(
                name=definition["name"],
                condition=definition["condition"],
                description=definition["description"],
                size=cluster.size,
                share=cluster.share,
                precision=cluster.precision,
                recall=cluster.recall,
                matched=cluster.matched,
                summary=cluster.description,
            )
        )
    return profiles_pb2.DiscoverSegmentsResponse(
        segments=segments,
        k=found.k,
        features=found.features,
        members=found.seen,
        clustered=found.clustered,
        without_order=found.without_order,
        as_of=_ts(at),
    )


def segment_proto(definition: SegmentDefinition, size: int) -> profiles_pb2.Segment:
    message = profiles_pb2.Segment(
        name=definition.name,
        condition=definition.condition,
        description=definition.description,
        kind=definition.kind,
        size=size,
    )
    if definition.created_at is not None:
        message.created_at.CopyFrom(_ts(definition.created_at))
    if definition.updated_at is not None:
        message.updated_at.CopyFrom(_ts(definition.updated_at))
    return message


def member_proto(portrait: Portrait) -> profiles_pb2.SegmentMember:
    rfm, scores = portrait.rfm, portrait.scores
    message = profiles_pb2.SegmentMember(
        member_id=portrait.profile.member_id,
        lifecycle=portrait.lifecycle,
        frequency=rfm.frequency,
        monetary=rfm.monetary,
        top_category=portrait.affinities[0].category if portrait.affinities else "",
        tags=sorted({*portrait.rule_tags, *(t.tag for t in portrait.manual_tags)}),
        consent=consent_proto(portrait.consent, portrait.profile.consent_at),
    )
    if rfm.recency_days is not None:
        message.recency_days = rfm.recency_days
    if scores is not None:
        message.r_score, message.f_score, message.m_score = scores.r, scores.f, scores.m
    return message


def to_proto(portrait: Portrait, segments: Sequence[str] = ()) -> profiles_pb2.Profile:
    profile, rfm = portrait.profile, portrait.rfm
    message = profiles_pb2.Profile(
        member_id=profile.member_id,
        known=True,
        first_seen=_ts(profile.first_seen),
        last_seen=_ts(profile.last_seen),
        events=profile.events,
        rfm=profiles_pb2.Rfm(frequency=rfm.frequency, monetary=rfm.monetary),
        recent_items=[
            profiles_pb2.RecentItem(item_id=r.item_id, event_type=r.event_type, at=_ts(r.at))
            for r in profile.recent
        ],
        categories=[
            profiles_pb2.CategoryCount(category=name, weight=stat.weight, events=stat.events)
            for name, stat in sorted(
                profile.categories.items(), key=lambda kv: (-kv[1].weight, kv[0])
            )
            if stat.events
        ],
        purchased_item_ids=profile.purchased,
        lifecycle=portrait.lifecycle,
        affinities=[
            profiles_pb2.CategoryAffinity(
                category=a.category,
                share=a.share,
                weight=a.weight,
                last_purchase_at=_ts(a.last_purchase_at) if a.last_purchase_at else None,
            )
            for a in portrait.affinities
        ],
        price=profiles_pb2.PriceProfile(
            band=portrait.price.band or "",
            percentile=portrait.price.percentile,
            typical_price=portrait.price.typical_price,
            sensitivity=portrait.price.sensitivity,
            discounted_orders=portrait.price.discounted_orders,
        ),
        preferred_channel=portrait.preferred_channel or "",
        tags=[profiles_pb2.Tag(tag=t, source="rule") for t in portrait.rule_tags]
        + [_manual(t) for t in portrait.manual_tags],
        as_of=_ts(portrait.as_of),
        consent=consent_proto(portrait.consent, profile.consent_at),
        segments=list(segments),
    )
    if rfm.recency_days is not None:
        message.rfm.recency_days = rfm.recency_days
    if portrait.scores is not None:
        message.rfm.r_score = portrait.scores.r
        message.rfm.f_score = portrait.scores.f
        message.rfm.m_score = portrait.scores.m
    if profile.last_order_at is not None:
        message.last_order_at.CopyFrom(_ts(profile.last_order_at))
    if profile.first_order_at is not None:
        message.first_order_at.CopyFrom(_ts(profile.first_order_at))
    return message


def scoring_proto(scoring: Scoring) -> profiles_pb2.Scoring:
    return profiles_pb2.Scoring(
        computed_at=_ts(scoring.computed_at),
        window_days=scoring.window_days,
        population=scoring.population,
        recency_days=scoring.recency,
        frequency=scoring.frequency,
        monetary=scoring.monetary,
        priced_categories=sorted(scoring.prices),
    )
