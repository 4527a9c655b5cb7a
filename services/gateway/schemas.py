"""Response bodies of the public HTTP API (the shapes DESIGN.md fixes)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal, get_args

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.compose import RankedEntry, Recommendation
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2

# Where a shop shows recommendations; each has its own mix of candidate sources.
Placement = Literal["home", "product", "cart", "email", "search", "category"]


class ItemOut(BaseModel):
    item_id: str
    score: float
    reasons: list[str]
    category: str | None = None
    sources: list[str] = Field(
        default_factory=list,
        description="The candidate sources that proposed the item, most confident first "
        "(`als`, `buy_again`, `bought_together`, `similar`, `content`, `trending`, "
        "`popular`; `rule` for an item a merchandising rule added).",
    )
    rules: list[str] = Field(
        default_factory=list,
        description="The merchandising rules that pinned, boosted, buried or promoted it.",
    )

    @classmethod
    def of(cls, entry: RankedEntry) -> ItemOut:
        return cls(
            item_id=entry.item_id,
            score=entry.score,
            reasons=entry.reasons,
            category=entry.category or None,
            sources=entry.sources,
            rules=entry.rules,
        )


class RecommendationsOut(BaseModel):
    recommendation_id: str
    member_id: str
    placement: str
    items: list[ItemOut]
    model: str
    variant: str = Field(
        description="The experiment variant that ranked the answer (log it with clicks to "
        "attribute them); `default` outside every experiment."
    )
    experiment_id: str | None = Field(
        default=None, description="The running experiment that chose the ranker, if any."
    )
    degraded: bool
    degraded_services: list[str] = Field(
        default_factory=list,
        description="What degraded the answer: the services that failed, overran or were "
        "skipped (their breaker open, the request's time budget spent), or `gateway` when "
        "the gateway was past capacity and answered the popular items at once.",
    )
    personalized: bool = Field(
        description="False when nothing of the member's shaped the answer: they withdrew "
        "personalization consent, or the profiles service could not say."
    )

    @classmethod
    def of(cls, rec: Recommendation) -> RecommendationsOut:
        return cls(
            recommendation_id=rec.recommendation_id,
            member_id=rec.member_id,
            placement=rec.placement,
            items=[ItemOut.of(i) for i in rec.items],
            model=rec.model,
            variant=rec.variant,
            experiment_id=rec.experiment_id or None,
            degraded=rec.degraded,
            degraded_services=rec.degraded_services,
            personalized=rec.personalized,
        )


class SimilarOut(BaseModel):
    recommendation_id: str
    item_id: str
    items: list[ItemOut]
    model: str
    degraded: bool
    degraded_services: list[str] = Field(
        default_factory=list,
        description="What degraded the answer: the services that failed, overran or were "
        "skipped (their breaker open, the request's time budget spent), or `gateway` when "
        "the gateway was past capacity and answered the popular items at once.",
    )

    @classmethod
    def of(cls, rec: Recommendation, item_id: str) -> SimilarOut:
        return cls(
            recommendation_id=rec.recommendation_id,
            item_id=item_id,
            items=[ItemOut.of(i) for i in rec.items],
            model=rec.model,
            degraded=rec.degraded,
            degraded_services=rec.degraded_services,
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


class ConsentOut(BaseModel):
    """What the member allows now, the configured defaults filled in (docs/consent.md)."""

    personalization: bool = Field(description="Portrait-driven recommendations and targeting.")
    email: bool
    sms: bool
    push: bool
    onsite: bool
    updated_at: datetime | None = Field(
        description="When the member last changed any of it; null while all are defaults."
    )

    @classmethod
    def of(cls, c: profiles_pb2.Consent) -> ConsentOut:
        return cls(
            personalization=c.personalization,
            email=c.email,
            sms=c.sms,
            push=c.push,
            onsite=c.onsite,
            updated_at=_time(c.updated_at) if c.HasField("updated_at") else None,
        )


class ConsentIn(BaseModel):
    """A partial change: only the keys sent change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    personalization: bool | None = None
    email: bool | None = None
    sms: bool | None = None
    push: bool | None = None
    onsite: bool | None = None

    def changes(self) -> dict[str, bool]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class MemberConsentOut(BaseModel):
    member_id: str
    consent: ConsentOut


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
    consent: ConsentOut
    segments: list[str] = Field(
        description="The segments the member is in (none without personalization consent)."
    )
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
            lifecycle=lifecycle_of(p.lifecycle),
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
            consent=ConsentOut.of(p.consent),
            segments=list(p.segments),
            as_of=_time(p.as_of),
        )


SEGMENT_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class ConditionIn(BaseModel):
    """A condition over portrait fields (docs/segments.md): alone, to count it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    condition: str = Field(
        min_length=1,
        max_length=2000,
        examples=["days_since_purchase.garden <= 90 and m_score >= 4 and 'email' in consent"],
    )


class SegmentDefinitionIn(ConditionIn):
    """A segment's condition and what it is for."""

    description: str = Field(default="", max_length=500)


class SegmentIn(SegmentDefinitionIn):
    name: str = Field(
        pattern=SEGMENT_NAME,
        max_length=64,
        description="1 to 64 lower-case letters, digits, '-' or '_'.",
        examples=["garden-big-spenders"],
    )


class ConditionCountOut(BaseModel):
    members: int = Field(description="Members the condition holds for now.")
    by_channel: dict[str, int] = Field(
        description="Of them, those who consent to each channel (email, sms, push, onsite)."
    )
    as_of: datetime


class DiscoverIn(BaseModel):
    """What segment discovery clusters: how many clusters, over which members."""

    model_config = ConfigDict(extra="forbid", strict=True)

    clusters: int = Field(default=5, ge=2, le=12, description="How many segments to suggest.")
    window_days: float | None = Field(
        default=None,
        gt=0,
        le=36_500,
        description="Only members whose last order is at most this many days old (each "
        "suggested condition then says so); none: every member who ordered.",
    )


class SuggestedSegmentOut(BaseModel):
    name: str = Field(
        description="A suggested name, free among the suggestions (it may be taken by a saved "
        "segment: `PUT` replaces that one)."
    )
    size: int = Field(description="Members in the cluster.")
    share: float = Field(description="Their share of the members clustered, 0..1.")
    description: str = Field(
        description="The cluster in words: recency, frequency and spend against everyone "
        "clustered, the categories that stand out, its median figures."
    )
    conditions: SegmentDefinitionIn = Field(
        description="The body of `PUT /v1/segments/{name}` that saves this suggestion as a "
        "segment: a condition approximating the cluster, and a description of it."
    )
    precision: float = Field(description="Of the members the condition matches, the share in it.")
    recall: float = Field(description="Of the cluster, the share the condition matches.")


class DiscoveredOut(BaseModel):
    clusters: list[SuggestedSegmentOut] = Field(description="Largest first.")
    features: list[str] = Field(description="What was clustered on, as conditions name it.")
    members: int = Field(description="Members looked at (within the window, when given).")
    clustered: int = Field(description="Of them, those with an order: the ones clustered.")
    as_of: datetime = Field(description="The instant every portrait was drawn at.")


class MemberSegmentsOut(BaseModel):
    member_id: str
    segments: list[str] = Field(
        description="The segments the member is in now, by name: their lifecycle segment and "
        "every defined segment whose condition holds (none without personalization consent)."
    )
    lifecycle: Lifecycle | None = Field(
        description="The lifecycle segment, consent or not; null only from an older "
        "profiles service."
    )
    personalized: bool = Field(
        description="False when the member withdrew personalization consent: then in no segment."
    )


class DailySizeOut(BaseModel):
    day: date
    size: int


class SegmentOut(BaseModel):
    name: str
    condition: str
    description: str
    kind: Literal["lifecycle", "custom"] = Field(
        description="`lifecycle`: built in, read only; `custom`: defined through the API."
    )
    size: int = Field(description="Members in it as of `as_of`.")
    created_at: datetime | None
    updated_at: datetime | None
    trend: list[DailySizeOut] = Field(
        default_factory=list,
        description="Its size per day (the day's last count), oldest first, over "
        "`RECOFLEET_PROFILES_SEGMENT_TREND_DAYS`; days nobody counted on are missing. "
        "In `GET /v1/segments` only.",
    )

    @classmethod
    def of(cls, s: profiles_pb2.Segment) -> SegmentOut:
        return cls(
            name=s.name,
            condition=s.condition,
            description=s.description,
            kind="lifecycle" if s.kind == "lifecycle" else "custom",
            size=s.size,
            created_at=_time(s.created_at) if s.HasField("created_at") else None,
            updated_at=_time(s.updated_at) if s.HasField("updated_at") else None,
            trend=[DailySizeOut(day=date.fromisoformat(p.day), size=p.size) for p in s.trend],
        )


class SegmentAnswer(SegmentOut):
    as_of: datetime


class SegmentsOut(BaseModel):
    segments: list[SegmentOut]
    members: int = Field(description="Members looked at to count the sizes.")
    as_of: datetime = Field(description="The fleet clock's instant the sizes were counted at.")


class SegmentMemberOut(BaseModel):
    member_id: str
    lifecycle: str
    recency_days: float | None
    frequency: int
    monetary: float
    r_score: int | None
    f_score: int | None
    m_score: int | None
    top_category: str | None
    tags: list[str]
    consent: ConsentOut

    @classmethod
    def of(cls, m: profiles_pb2.SegmentMember) -> SegmentMemberOut:
        return cls(
            member_id=m.member_id,
            lifecycle=m.lifecycle,
            recency_days=m.recency_days if m.HasField("recency_days") else None,
            frequency=m.frequency,
            monetary=m.monetary,
            r_score=m.r_score if m.HasField("r_score") else None,
            f_score=m.f_score if m.HasField("f_score") else None,
            m_score=m.m_score if m.HasField("m_score") else None,
            top_category=m.top_category or None,
            tags=list(m.tags),
            consent=ConsentOut.of(m.consent),
        )


class SegmentMembersOut(BaseModel):
    segment: str
    members: list[SegmentMemberOut]
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


class ErasureOut(BaseModel):
    member_id: str
    erasure_id: str = Field(description="Names the erasure in every service's audit entries.")
    requested_at: datetime
    status: Literal["accepted"] = Field(
        description="Every service erases the member within seconds (docs/erasure.md)."
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


def lifecycle_of(value: str) -> Lifecycle | None:
    return _LIFECYCLES.get(value)


def _band(value: str) -> Band | None:
    return _BANDS.get(value)


class OfferOut(BaseModel):
    offer_id: str
    campaign_id: str
    campaign_name: str
    title: str
    description: str
    coupon_code: str = Field(description="The member's code (their own for unique codes).")
    discount_percent: float
    discount_amount: float
    minimum_spend: float
    channel: str = Field(description="The channel this offer is for.")
    channels: list[str] = Field(description="Every channel of the campaign.")
    tier: str | None
    expires_at: datetime | None

    @classmethod
    def of(cls, o: campaigns_pb2.Offer) -> OfferOut:
        return cls(
            offer_id=o.offer_id,
            campaign_id=o.campaign_id,
            campaign_name=o.campaign_name,
            title=o.title,
            description=o.description,
            coupon_code=o.coupon_code,
            discount_percent=o.discount_percent,
            discount_amount=o.discount_amount,
            minimum_spend=o.minimum_spend,
            channel=o.channel,
            channels=list(o.channels),
            tier=o.tier or None,
            expires_at=o.expires_at.ToDatetime(tzinfo=UTC) if o.HasField("expires_at") else None,
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
    """Segment's clients look for `success`; the per-event outcome comes with it. A batch
    read in full is a 200 as on api.segment.io, `success` false and `detail` saying why
    when no event of it could be used."""

    success: bool
    detail: str | None = None


class SegmentErrorBody(ErrorBody):
    """A refusal of the Segment endpoints: `detail` as everywhere, and `code` and `message`
    as the Segment API's libraries read them (RudderStack's SDK needs `code`)."""

    code: str
    message: str


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
