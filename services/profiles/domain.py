"""What a member's profile is and how one event changes it. No storage, no transport."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from services.common.events import AnyEvent, EventType


@dataclass
class CategoryStat:
    weight: float = 0.0
    events: int = 0


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

    def rfm(self, now: datetime) -> Rfm:
        recency = None
        if self.last_order_at is not None:
            recency = round(max((now - self.last_order_at).total_seconds(), 0.0) / 86400, 2)
        return Rfm(recency_days=recency, frequency=self.orders, monetary=round(self.spend, 2))

    def category_weights(self) -> dict[str, float]:
        return {name: stat.weight for name, stat in self.categories.items()}


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
) -> set[str]:
    """Fold one (not yet applied) event into the profile; return the categories it touched.

    `new_order` says whether this purchase is an order not counted before (several
    events may share an order id); `item_categories` fills categories events leave out.
    """
    profile.events += 1
    profile.first_seen = min(profile.first_seen, event.timestamp)
    profile.last_seen = max(profile.last_seen, event.timestamp)
    lines = event.lines()
    if event.type == EventType.PURCHASE:
        _record_purchase(profile, event, new_order)
    elif event.type == EventType.REFUND:
        profile.spend = round(profile.spend - event.order_value(), 2)
    weight = weights.get(event.type.value, 0.0)
    if weight == 0.0:
        return set()
    touched = set()
    for line in lines:
        category = line.category or item_categories.get(line.item_id)
        if category:
            stat = profile.categories.setdefault(category, CategoryStat())
            stat.weight += weight
            stat.events += 1
            touched.add(category)
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
    if profile.last_order_at is None or event.timestamp > profile.last_order_at:
        profile.last_order_at = event.timestamp
