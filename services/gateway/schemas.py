"""Response bodies of the public HTTP API (the shapes DESIGN.md fixes)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from services.gateway.compose import RankedEntry, Recommendation
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2


class ItemOut(BaseModel):
    item_id: str
    score: float
    reasons: list[str]
    category: str | None = None

    @classmethod
    def of(cls, entry: RankedEntry) -> ItemOut:
        return cls(
            item_id=entry.item_id,
            score=entry.score,
            reasons=entry.reasons,
            category=entry.category or None,
        )


class RecommendationsOut(BaseModel):
    recommendation_id: str
    member_id: str
    placement: str
    items: list[ItemOut]
    model: str
    variant: str
    degraded: bool

    @classmethod
    def of(cls, rec: Recommendation) -> RecommendationsOut:
        return cls(
            recommendation_id=rec.recommendation_id,
            member_id=rec.member_id,
            placement=rec.placement,
            items=[ItemOut.of(i) for i in rec.items],
            model=rec.model,
            variant=rec.variant,
            degraded=rec.degraded,
        )


class SimilarOut(BaseModel):
    recommendation_id: str
    item_id: str
    items: list[ItemOut]
    model: str
    degraded: bool

    @classmethod
    def of(cls, rec: Recommendation, item_id: str) -> SimilarOut:
        return cls(
            recommendation_id=rec.recommendation_id,
            item_id=item_id,
            items=[ItemOut.of(i) for i in rec.items],
            model=rec.model,
            degraded=rec.degraded,
        )


class RfmOut(BaseModel):
    recency_days: float | None
    frequency: int
    monetary: float


class RecentItemOut(BaseModel):
    item_id: str
    event_type: str
    at: datetime


class CategoryOut(BaseModel):
    category: str
    weight: float
    events: int


class ProfileOut(BaseModel):
    member_id: str
    first_seen: datetime
    last_seen: datetime
    last_order_at: datetime | None
    events: int
    rfm: RfmOut
    recent_items: list[RecentItemOut]
    categories: list[CategoryOut]
    purchased_item_ids: list[str]

    @classmethod
    def of(cls, p: profiles_pb2.Profile) -> ProfileOut:
        return cls(
            member_id=p.member_id,
            first_seen=p.first_seen.ToDatetime(tzinfo=UTC),
            last_seen=p.last_seen.ToDatetime(tzinfo=UTC),
            last_order_at=p.last_order_at.ToDatetime(tzinfo=UTC)
            if p.HasField("last_order_at")
            else None,
            events=p.events,
            rfm=RfmOut(
                recency_days=p.rfm.recency_days if p.rfm.HasField("recency_days") else None,
                frequency=p.rfm.frequency,
                monetary=p.rfm.monetary,
            ),
            recent_items=[
                RecentItemOut(item_id=r.item_id, event_type=r.event_type, at=r.at.ToDatetime(UTC))
                for r in p.recent_items
            ],
            categories=[
                CategoryOut(category=c.category, weight=c.weight, events=c.events)
                for c in p.categories
            ],
            purchased_item_ids=list(p.purchased_item_ids),
        )


class OfferOut(BaseModel):
    offer_id: str
    campaign_id: str
    title: str
    description: str
    coupon_code: str
    discount_percent: float
    channels: list[str]

    @classmethod
    def of(cls, o: campaigns_pb2.Offer) -> OfferOut:
        return cls(
            offer_id=o.offer_id,
            campaign_id=o.campaign_id,
            title=o.title,
            description=o.description,
            coupon_code=o.coupon_code,
            discount_percent=o.discount_percent,
            channels=list(o.channels),
        )


class OffersOut(BaseModel):
    member_id: str
    channel: str | None
    offers: list[OfferOut]
    degraded: bool


class ErrorBody(BaseModel):
    """What every refusal and failure carries: one sentence saying what is wrong."""

    detail: str


class RejectionOut(BaseModel):
    """One event or item refused: its position in the request, its id when it had one, why."""

    index: int
    id: str
    reason: str


class EventsAccepted(BaseModel):
    """The outcome of a request carrying events: the valid ones are taken, each invalid one
    is listed with its reason, and kinds of events recofleet does not use are counted."""

    accepted: int
    event_ids: list[str]
    rejected: list[RejectionOut]
    ignored: int


class EventsRefused(EventsAccepted):
    """Nothing was accepted: the same summary, with a `detail` like every error body."""

    detail: str


class SegmentAccepted(EventsAccepted):
    """Segment's clients look for `success`; the per-event outcome comes with it."""

    success: bool


class SegmentRefused(SegmentAccepted):
    detail: str


class ItemsAccepted(BaseModel):
    accepted: int
    item_ids: list[str]
    rejected: list[RejectionOut]


class ItemsRefused(ItemsAccepted):
    detail: str


class HealthOut(BaseModel):
    status: str


class ReadinessOut(BaseModel):
    status: str
    services: dict[str, str]


class NotReadyOut(ReadinessOut):
    detail: str
