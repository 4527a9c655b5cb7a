"""A member's portrait: what their profile says as of the fleet's clock.

The profile (domain.py) holds figures kept per event; the portrait adds what depends on
the time of reading and on the whole store: recency, RFM scores (scoring.py), lifecycle
segment, decayed category affinities, price band, preferred channel and tags. Every
definition, with its defaults, is in docs/portraits.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from services.profiles.conditions import Condition, parse
from services.profiles.domain import ManualTag, MemberProfile, Rfm
from services.profiles.scoring import RfmScores, Scoring, percentile_of, rfm_scores
from services.profiles.settings import LifecycleSettings, ProfilesSettings

DAY_S = 86400.0


@dataclass(frozen=True)
class Affinity:
    category: str
    share: float  # of the member's decayed weight over every category, 0..1
    weight: float  # decayed to the portrait's instant
    last_purchase_at: datetime | None


@dataclass(frozen=True)
class PriceProfile:
    band: str | None  # low | mid | high
    percentile: float | None  # 0..1 within the member's categories' price distributions
    typical_price: float | None
    sensitivity: float | None  # share of orders with a discount or coupon
    discounted_orders: int


@dataclass(frozen=True)
class Portrait:
    profile: MemberProfile
    as_of: datetime
    rfm: Rfm
    scores: RfmScores | None
    lifecycle: str
    affinities: list[Affinity]
    price: PriceProfile
    preferred_channel: str | None
    rule_tags: list[str]
    manual_tags: list[ManualTag]
    # Every consent key (services/common/members.CONSENT_KEYS) -> allowed.
    consent: Mapping[str, bool]
    # What conditions read (`values(self)`), kept from drawing the rule tags: segments
    # read them again for every member they look at.
    fields: Mapping[str, Any] | None = None


def lifecycle(
    profile: MemberProfile, scores: RfmScores | None, now: datetime, rules: LifecycleSettings
) -> str:
    """The member's lifecycle segment: the first of these that holds.

    1. new: first order within `new_days`, or no order and first seen within `new_days`;
    2. prospect: never ordered (first seen longer ago);
    3. churned: no order for more than `churned_days`;
    4. at-risk: no order for more than `at_risk_days`;
    5. high-value: M score at least `high_value_min_m_score`;
    6. loyal: F score at least `loyal_min_f_score`;
    7. active: everyone else (ordered within `at_risk_days`).
    """
    if profile.first_order_at is None or profile.last_order_at is None:
        return "new" if _days(now, profile.first_seen) <= rules.new_days else "prospect"
    if _days(now, profile.first_order_at) <= rules.new_days:
        return "new"
    since_order = _days(now, profile.last_order_at)
    if since_order > rules.churned_days:
        return "churned"
    if since_order > rules.at_risk_days:
        return "at-risk"
    if scores is not None and scores.m >= rules.high_value_min_m_score:
        return "high-value"
    if scores is not None and scores.f >= rules.loyal_min_f_score:
        return "loyal"
    return "active"


def affinities(profile: MemberProfile, now: datetime, half_life_s: float) -> list[Affinity]:
    """Categories by decayed weight, highest first, with their share of the total."""
    decayed = {
        name: stat.affinity_as_of(now, half_life_s) for name, stat in profile.categories.items()
    }
    total = sum(decayed.values())
    ranked = sorted(decayed.items(), key=lambda kv: (-kv[1], kv[0]))
    return [
        Affinity(
            category=name,
            share=round(weight / total, 6) if total > 0 else 0.0,
            weight=round(weight, 6),
            last_purchase_at=profile.categories[name].last_purchase_at,
        )
        for name, weight in ranked
    ]


def price_profile(profile: MemberProfile, scoring: Scoring | None) -> PriceProfile:
    """Typical paid price, its place within the member's categories, discount share.

    Per category the member paid for, their mean paid unit price gets its percentile in
    that category's price distribution; the member's percentile is the mean of those,
    weighted by units bought. Band: low below 1/3, high above 2/3, mid between.
    """
    units = sum(stat.paid_units for stat in profile.categories.values())
    amount = sum(stat.paid_amount for stat in profile.categories.values())
    weighted, counted = 0.0, 0
    prices = scoring.prices if scoring is not None else {}
    for name, stat in profile.categories.items():
        points = prices.get(name)
        if stat.paid_units and points:
            weighted += stat.paid_units * percentile_of(stat.paid_amount / stat.paid_units, points)
            counted += stat.paid_units
    percentile = weighted / counted if counted else None
    band = None
    if percentile is not None:
        band = "low" if percentile < 1 / 3 else "high" if percentile > 2 / 3 else "mid"
    return PriceProfile(
        band=band,
        percentile=round(percentile, 4) if percentile is not None else None,
        typical_price=round(amount / units, 4) if units else None,
        sensitivity=(
            round(profile.discounted_orders / profile.orders, 4) if profile.orders else None
        ),
        discounted_orders=profile.discounted_orders,
    )


def preferred_channel(channels: Mapping[str, int]) -> str | None:
    """The channel of most events; a tie goes to the name first in alphabetical order."""
    if not channels:
        return None
    return min(channels.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def values(portrait: Portrait) -> dict[str, Any]:
    """The portrait as the fields conditions read (see conditions.FIELDS and FAMILIES)."""
    p, now = portrait.profile, portrait.as_of
    scores = portrait.scores
    found: dict[str, Any] = {
        "recency_days": portrait.rfm.recency_days,
        "frequency": portrait.rfm.frequency,
        "monetary": portrait.rfm.monetary,
        "r_score": scores.r if scores else None,
        "f_score": scores.f if scores else None,
        "m_score": scores.m if scores else None,
        "events": p.events,
        "lifecycle": portrait.lifecycle,
        "price_band": portrait.price.band,
        "price_percentile": portrait.price.percentile,
        "typical_price": portrait.price.typical_price,
        "price_sensitivity": portrait.price.sensitivity,
        "discounted_orders": portrait.price.discounted_orders,
        "preferred_channel": portrait.preferred_channel,
        "days_since_first_seen": _days(now, p.first_seen),
        "days_since_last_seen": _days(now, p.last_seen),
        "days_since_first_order": _days(now, p.first_order_at) if p.first_order_at else None,
        "tags": frozenset(t.tag for t in portrait.manual_tags),
        "consent": frozenset(key for key, allowed in portrait.consent.items() if allowed),
    }
    for affinity in portrait.affinities:
        found[f"affinity.{affinity.category}"] = affinity.share
        found[f"affinity_weight.{affinity.category}"] = affinity.weight
        if affinity.last_purchase_at is not None:
            found[f"days_since_purchase.{affinity.category}"] = _days(
                now, affinity.last_purchase_at
            )
    return found


def segment_values(portrait: Portrait) -> Mapping[str, Any]:
    """What segment conditions read: the portrait's values with the rule tags among `tags`."""
    found = portrait.fields if portrait.fields is not None else values(portrait)
    if portrait.rule_tags:
        return {**found, "tags": found["tags"] | frozenset(portrait.rule_tags)}
    return found


def consent_of(defaults: Mapping[str, bool], choices: Mapping[str, bool]) -> dict[str, bool]:
    """The member's consent: their choices over the configured defaults."""
    return {key: bool(choices.get(key, default)) for key, default in defaults.items()}


class Portraitist:
    """Draws portraits with one service's settings: its lifecycle rules and tag rules."""

    def __init__(self, settings: ProfilesSettings) -> None:
        self._settings = settings
        self._half_life_s = settings.affinity_half_life_days * DAY_S
        self.tag_rules: dict[str, Condition] = {
            tag: parse(rule) for tag, rule in sorted(settings.tag_rules.items())
        }
        self.consent_defaults: dict[str, bool] = settings.consent_defaults.model_dump()

    def draw(self, profile: MemberProfile, scoring: Scoring | None, now: datetime) -> Portrait:
        rfm = profile.rfm(now)
        scores = rfm_scores(scoring, _recency(profile, now), profile.orders, profile.spend)
        portrait = Portrait(
            profile=profile,
            as_of=now,
            rfm=rfm,
            scores=scores,
            lifecycle=lifecycle(profile, scores, now, self._settings.lifecycle),
            affinities=affinities(profile, now, self._half_life_s),
            price=price_profile(profile, scoring),
            preferred_channel=preferred_channel(profile.channels),
            rule_tags=[],
            manual_tags=sorted(profile.manual_tags, key=lambda t: t.tag),
            consent=consent_of(self.consent_defaults, profile.consent),
        )
        seen = values(portrait)
        return replace(
            portrait,
            rule_tags=[tag for tag, rule in self.tag_rules.items() if rule(seen)],
            fields=seen,
        )


def _recency(profile: MemberProfile, now: datetime) -> float | None:
    if profile.last_order_at is None:
        return None
    return _days(now, profile.last_order_at)


def _days(now: datetime, then: datetime) -> float:
    return max((now - then).total_seconds(), 0.0) / DAY_S
