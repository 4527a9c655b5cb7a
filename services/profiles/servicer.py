"""gRPC face of profiles."""

from __future__ import annotations

import asyncio
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.clock import Clock
from services.gen.recofleet.profiles.v1 import profiles_pb2, profiles_pb2_grpc
from services.profiles.domain import ManualTag
from services.profiles.portrait import Portrait, Portraitist
from services.profiles.scoring import Scoring
from services.profiles.store import ProfileStore, TooManyTags
from services.profiles.tags import check_tag


class ProfilesServicer(profiles_pb2_grpc.ProfilesServiceServicer):
    def __init__(
        self, store: ProfileStore, default_recent: int, portraitist: Portraitist, clock: Clock
    ) -> None:
        self._store = store
        self._default_recent = default_recent
        self._portraitist = portraitist
        self._clock = clock

    async def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> profiles_pb2.GetProfileResponse:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        limit = request.recent_limit or self._default_recent
        profile = await asyncio.to_thread(self._store.get, request.member_id, limit)
        if profile is None:
            return profiles_pb2.GetProfileResponse(
                profile=profiles_pb2.Profile(member_id=request.member_id, known=False)
            )
        scoring = await asyncio.to_thread(self._store.scoring)
        portrait = self._portraitist.draw(profile, scoring, self._clock.now())
        return profiles_pb2.GetProfileResponse(profile=to_proto(portrait))

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


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _manual(tag: ManualTag) -> profiles_pb2.Tag:
    return profiles_pb2.Tag(tag=tag.tag, source="manual", set_at=_ts(tag.set_at))


def to_proto(portrait: Portrait) -> profiles_pb2.Profile:
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
