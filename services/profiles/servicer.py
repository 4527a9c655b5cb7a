"""gRPC face of profiles."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.gen.recofleet.profiles.v1 import profiles_pb2, profiles_pb2_grpc
from services.profiles.domain import MemberProfile
from services.profiles.store import ProfileStore


class ProfilesServicer(profiles_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, store: ProfileStore, default_recent: int) -> None:
        self._store = store
        self._default_recent = default_recent

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
        return profiles_pb2.GetProfileResponse(profile=to_proto(profile, datetime.now(UTC)))


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_proto(profile: MemberProfile, now: datetime) -> profiles_pb2.Profile:
    rfm = profile.rfm(now)
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
        ],
        purchased_item_ids=profile.purchased,
    )
    if rfm.recency_days is not None:
        message.rfm.recency_days = rfm.recency_days
    if profile.last_order_at is not None:
        message.last_order_at.CopyFrom(_ts(profile.last_order_at))
    return message
