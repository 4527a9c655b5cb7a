"""What a member's profile is and how one event changes it. No storage, no transport.

The profile holds figures kept per event (sums, counts, instants, decayed weights); the
portrait (services/profiles/portrait.py) is what they say as of the fleet's clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from services.common.coupons import discounted
from services.common.events import AnyEvent, EventType

# Distinct channels counted per member: the rest of what a member's events claim is
# ignored, so that a sender making up channel names cannot grow a profile without bound.
MAX_CHANNELS = 16
MAX_CHANNEL_LENGTH = 32


_LN2 = math.log(2)


def decay(seconds: float, half_life_s: float) -> float:
    """The factor a weight keeps after `seconds` (halved every `half_life_s`)."""
    return math.exp(-_LN2 * seconds / half_life_s)


def _instant(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


@dataclass(slots=True)
class CategoryStat:
    # Weighted interactions with the category, never decayed (ranking reads these).
    weight: float = 0.0
    events: int = 0
    # The same weights decayed with the affinity half-life, as of `affinity_at_s` (the
    # latest weighted event in the category): decayed to the clock when read. Instants
    # here are seconds since the epoch: a profiles batch reads and writes thousands of
    # these rows, and a float costs the store nothing to convert.
    affinity: float = 0.0
    affinity_at_s: float | None = None
    last_purchase_at_s: float | None = None
    # Purchase lines with a price: units and what they cost (for the price band).
    paid_units: int = 0
    paid_amount: float = 0.0

    @property
    def last_purchase_at(self) -> datetime | None:
        return _instant(self.last_purchase_at_s)

    @property
    def affinity_at(self) -> datetime | None:
        return _instant(self.affinity_at_s)

    def add(self, weight: float, at_s: float, half_life_s: float) -> None:
        """Count an event of `weight` at `at_s` (seconds since the epoch)."""
        self.weight += weight
        self.events += 1
        latest = self.affinity_at_s
        if latest is None:
            self.affinity, self.affinity_at_s = weight, at_s
        elif at_s >= latest:
            if at_s > latest:
                self.affinity *= decay(at_s - latest, half_life_s)
                self.affinity_at_s = at_s
            self.affinity += weight
        else:
            # A late event: its weight has decayed by the time of the latest one.
            self.affinity += weight * decay(latest - at_s, half_life_s)

    def bought(self, at_s: float) -> None:
        if self.last_purchase_at_s is None or at_s > self.last_purchase_at_s:
            self.last_purchase_at_s = at_s

    def merge(self, other: CategoryStat, half_life_s: float) -> None:
        """Add another member's figures in the category (a visitor's, when they log in)."""
        self.weight += other.weight
        self.events += other.events
        self.paid_units += other.paid_units
        self.paid_amount += other.paid_amount
        if other.last_purchase_at_s is not None:
            self.bought(other.last_purchase_at_s)
        if other.affinity_at_s is None:
            return
        if self.affinity_at_s is None:
            self.affinity, self.affinity_at_s = other.affinity, other.affinity_at_s
            return
        # Both decayed to the later of the two instants, then added.
        at_s = max(self.affinity_at_s, other.affinity_at_s)
        self.affinity = self.affinity * decay(at_s - self.affinity_at_s, half_life_s) + (
            other.affinity * decay(at_s - other.affinity_at_s, half_life_s)
        )
        self.affinity_at_s = at_s

    def affinity_as_of(self, now: datetime, half_life_s: float) -> float:
        if self.affinity_at_s is None:
            return 0.0
        seconds = max(now.timestamp() - self.affinity_at_s, 0.0)
        return self.affinity * decay(seconds, half_life_s)


class RecentItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An item the member recently did something with; stored as `[item_id, type, at]`."""

    item_id: str
    event_type: str
    at: datetime


@dataclass(frozen=True)
class Rfm:
    recency_days: float | None
    frequency: int
    monetary: float


@dataclass(frozen=True)
class ManualTag:
    tag: str
    set_at: datetime


@dataclass
class MemberProfile:
    member_id: str
    first_seen: datetime
    last_seen: datetime
    last_order_at: datetime | None = None
    orders: int = 0
    spend: float = 0.0
    events: int = 0
    categories: dict[str, CategoryStat] = field(default_factory=dict)
    recent: list[RecentItem] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)
    first_order_at: datetime | None = None
    # Orders whose first purchase event carried a discount or a coupon.
    discounted_orders: int = 0
    # Events per channel they came through (see `channel_of`).
    channels: dict[str, int] = field(default_factory=dict)
    # Read with the profile, never on the ingest path (set through the API).
    manual_tags: list[ManualTag] = field(default_factory=list)
    # The member's own consent choices (the defaults fill the rest), and when they last
    # changed any; read with the profile.
    consent: dict[str, bool] = field(default_factory=dict)
    consent_at: datetime | None = None

    def rfm(self, now: datetime) -> Rfm:
        recency = None
        if self.last_order_at is not None:
            recency = round(max((now - self.last_order_at).total_seconds(), 0.0) / 86400, 2)
        return Rfm(recency_days=recency, frequency=self.orders, monetary=round(self.spend, 2))

    def category_weights(self) -> dict[str, float]:
        return {name: stat.weight for name, stat in self.categories.items()}


def merge_profiles(
    member: MemberProfile, visitor: MemberProfile, *, keep_recent: int, half_life_s: float
) -> None:
    """Fold an anonymous visitor's profile into the member's they turned out to be."""
    member.first_seen = min(member.first_seen, visitor.first_seen)
    member.last_seen = max(member.last_seen, visitor.last_seen)
    member.last_order_at = _latest(member.last_order_at, visitor.last_order_at, max)
    member.first_order_at = _latest(member.first_order_at, visitor.first_order_at, min)
    member.orders += visitor.orders
    member.spend = round(member.spend + visitor.spend, 2)
    member.events += visitor.events
    member.discounted_orders += visitor.discounted_orders
    for channel, count in visitor.channels.items():
        if channel in member.channels or len(member.channels) < MAX_CHANNELS:
            member.channels[channel] = member.channels.get(channel, 0) + count
    for name, stat in visitor.categories.items():
        mine = member.categories.get(name)
        if mine is None:
            member.categories[name] = stat
        else:
            mine.merge(stat, half_life_s)
    recent = sorted(member.recent + visitor.recent, key=lambda r: r.at, reverse=True)
    member.recent = recent[:keep_recent]


def _latest(
    a: datetime | None, b: datetime | None, pick: Callable[[datetime, datetime], datetime]
) -> datetime | None:
    if a is None or b is None:
        return a or b
    return pick(a, b)


def new_profile(event: AnyEvent) -> MemberProfile:
    return MemberProfile(
        member_id=event.member_id, first_seen=event.timestamp, last_seen=event.timestamp
    )


def apply_event(
    profile: MemberProfile,
    event: AnyEvent,
    *,
    item_categories: Mapping[str, str],
    weights: Mapping[str, float],
    new_order: bool,
    keep_recent: int,
    half_life_s: float,
) -> set[str]:
    """Fold one (not yet applied) event into the profile; return the categories it touched.

    `new_order` says whether this purchase is an order not counted before (several
    events may share an order id); `item_categories` fills categories events leave out.
    """
    at = event.timestamp
    profile.events += 1
    profile.first_seen = min(profile.first_seen, at)
    profile.last_seen = max(profile.last_seen, at)
    if event.context:
        channel = channel_of(event.context)
        if channel is not None and (
            channel in profile.channels or len(profile.channels) < MAX_CHANNELS
        ):
            profile.channels[channel] = profile.channels.get(channel, 0) + 1
    lines = event.lines()
    purchase = event.type == EventType.PURCHASE
    if purchase:
        _record_purchase(profile, event, new_order)
    elif event.type == EventType.REFUND:
        profile.spend = round(profile.spend - event.order_value(), 2)
    weight = weights.get(event.type.value, 0.0)
    if weight == 0.0 and not purchase:
        return set()
    touched = set()
    at_s = at.timestamp()
    for line in lines:
        category = line.category or item_categories.get(line.item_id)
        if category:
            stat = profile.categories.get(category)
            if stat is None:
                stat = profile.categories[category] = CategoryStat()
            if weight:
                stat.add(weight, at_s, half_life_s)
            if purchase:
                if stat.last_purchase_at_s is None or at_s > stat.last_purchase_at_s:
                    stat.last_purchase_at_s = at_s
                if line.price is not None:
                    stat.paid_units += line.quantity
                    stat.paid_amount += line.price * line.quantity
            touched.add(category)
    if weight == 0.0:
        return touched
    added = [RecentItem(line.item_id, event.type.value, event.timestamp) for line in lines]
    recent = added + profile.recent
    if profile.recent and event.timestamp < profile.recent[0].at:
        # Newest first by when it happened, not when it arrived: a late event sorts in.
        recent.sort(key=lambda r: r.at, reverse=True)
    profile.recent = recent[:keep_recent]
    return touched


def _record_purchase(profile: MemberProfile, event: AnyEvent, new_order: bool) -> None:
    profile.spend = round(profile.spend + event.order_value(), 2)
    if new_order:
        profile.orders += 1
        if event.context and discounted(event.context):
            profile.discounted_orders += 1
    at = event.timestamp
    if profile.last_order_at is None or at > profile.last_order_at:
        profile.last_order_at = at
    if profile.first_order_at is None or at < profile.first_order_at:
        profile.first_order_at = at


def channel_of(context: Mapping[str, Any]) -> str | None:
    """The channel an event came through, in lower case, or None when it does not say.

    The first of: the native `context.channel`; Segment's `channel` (the message's, or its
    context's; kept under `context.source`); a campaign medium: native
    `context.utm_medium`, Segment's `context.campaign.medium`, GA4's `medium` or
    `campaign_medium` parameter.
    """
    found = context.get("channel") or context.get("utm_medium")
    if found is None:
        source = context.get("source")
        if isinstance(source, dict):
            found = _source_channel(source)
    if not isinstance(found, str):
        return None
    channel = found.strip().lower()[:MAX_CHANNEL_LENGTH]
    return channel or None


def _source_channel(source: dict[str, Any]) -> Any:
    segment = source.get("context")
    if source.get("channel") or isinstance(segment, dict):
        campaign = segment.get("campaign") if isinstance(segment, dict) else None
        medium = campaign.get("medium") if isinstance(campaign, dict) else None
        in_context = segment.get("channel") if isinstance(segment, dict) else None
        return source.get("channel") or in_context or medium
    params = source.get("params")
    if isinstance(params, dict):
        return params.get("medium") or params.get("campaign_medium")
    return None
