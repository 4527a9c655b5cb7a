"""Response bodies of the public HTTP API (the shapes DESIGN.md fixes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, get_args

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

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
    recency_days: float | None = Field(description="Days since the last order; null: none yet.")
    frequency: int = Field(description="Distinct orders placed.")
    monetary: float = Field(description="Spend: order values minus refunds.")
    r_score: int | None = Field(
        ge=1, le=5, description="Recency score 1-5 (5: most recent); null without an order."
    )
    f_score: int | None = Field(ge=1, le=5, description="Frequency score 1-5.")
    m_score: int | None = Field(ge=1, le=5, description="Monetary score 1-5.")


class RecentItemOut(BaseModel):
    item_id: str
    event_type: str
    at: datetime


class CategoryOut(BaseModel):
    category: str
    weight: float
    events: int


class AffinityOut(BaseModel):
    category: str
    share: float = Field(description="Share of the member's decayed weight, 0-1.")
    weight: float = Field(description="Weighted interactions decayed to `as_of`.")
    last_purchase_at: datetime | None


Band = Literal["low", "mid", "high"]


class PriceOut(BaseModel):
    band: Band | None = Field(
        description="Typical paid price against the member's categories' prices (terciles)."
    )
    percentile: float | None = Field(description="Where that price falls, 0-1.")
    typical_price: float | None = Field(description="Mean paid unit price, by quantity.")
    sensitivity: float | None = Field(description="Share of orders with a discount or coupon.")
    discounted_orders: int


class TagOut(BaseModel):
    tag: str
    source: Literal["rule", "manual"]
    set_at: datetime | None = Field(description="When a manual tag was set; null for rule tags.")

    @classmethod
    def of(cls, t: profiles_pb2.Tag) -> TagOut:
        return cls(
            tag=t.tag,
            source="manual" if t.source == "manual" else "rule",
            set_at=_time(t.set_at) if t.HasField("set_at") else None,
        )


Lifecycle = Literal["new", "active", "high-value", "loyal", "at-risk", "churned", "prospect"]


class ProfileOut(BaseModel):
    """A member's portrait as of the fleet's clock (`as_of`); fields: docs/portraits.md."""

    member_id: str
    first_seen: datetime
    last_seen: datetime
    first_order_at: datetime | None
    last_order_at: datetime | None
    events: int
    rfm: RfmOut
    lifecycle: Lifecycle | None = Field(
        description="The lifecycle segment; null only from a profiles service older than "
        "the gateway (during an upgrade)."
    )
    affinities: list[AffinityOut]
    price: PriceOut
    preferred_channel: str | None
    tags: list[TagOut]
    recent_items: list[RecentItemOut]
    categories: list[CategoryOut]
    purchased_item_ids: list[str]
    as_of: datetime

    @classmethod
    def of(cls, p: profiles_pb2.Profile) -> ProfileOut:
        rfm, price = p.rfm, p.price
        return cls(
            member_id=p.member_id,
            first_seen=_time(p.first_seen),
            last_seen=_time(p.last_seen),
            first_order_at=_time(p.first_order_at) if p.HasField("first_order_at") else None,
            last_order_at=_time(p.last_order_at) if p.HasField("last_order_at") else None,
            events=p.events,
            rfm=RfmOut(
                recency_days=rfm.recency_days if rfm.HasField("recency_days") else None,
                frequency=rfm.frequency,
                monetary=rfm.monetary,
                r_score=rfm.r_score if rfm.HasField("r_score") else None,
                f_score=rfm.f_score if rfm.HasField("f_score") else None,
                m_score=rfm.m_score if rfm.HasField("m_score") else None,
            ),
            lifecycle=_lifecycle(p.lifecycle),
            affinities=[
                AffinityOut(
                    category=a.category,
                    share=a.share,
                    weight=a.weight,
                    last_purchase_at=(
                        _time(a.last_purchase_at) if a.HasField("last_purchase_at") else None
                    ),
                )
                for a in p.affinities
            ],
            price=PriceOut(
                band=_band(price.band),
                percentile=price.percentile if price.HasField("percentile") else None,
                typical_price=price.typical_price if price.HasField("typical_price") else None,
                sensitivity=price.sensitivity if price.HasField("sensitivity") else None,
                discounted_orders=price.discounted_orders,
            ),
            preferred_channel=p.preferred_channel or None,
            tags=[TagOut.of(t) for t in p.tags],
            recent_items=[
                RecentItemOut(item_id=r.item_id, event_type=r.event_type, at=_time(r.at))
                for r in p.recent_items
            ],
            categories=[
                CategoryOut(category=c.category, weight=c.weight, events=c.events)
                for c in p.categories
            ],
            purchased_item_ids=list(p.purchased_item_ids),
            as_of=_time(p.as_of),
        )


class MemberTagsOut(BaseModel):
    """The member's manual tags after the change."""

    member_id: str
    manual_tags: list[TagOut]

    @classmethod
    def of(cls, reply: profiles_pb2.ManualTagsResponse) -> MemberTagsOut:
        return cls(member_id=reply.member_id, manual_tags=[TagOut.of(t) for t in reply.tags])


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


_LIFECYCLES: dict[str, Lifecycle] = {name: name for name in get_args(Lifecycle)}
_BANDS: dict[str, Band] = {name: name for name in get_args(Band)}


def _lifecycle(value: str) -> Lifecycle | None:
    return _LIFECYCLES.get(value)


def _band(value: str) -> Band | None:
    return _BANDS.get(value)


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
