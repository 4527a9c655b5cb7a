"""Redemptions: purchases that carry a campaign's coupon code, each order counted once.

A code is read where each source puts it: the native event's `context.coupon`, Segment's
`properties.coupon` (or one of its `products`), GA4's `coupon` parameter (or one of its
`items`); the last two are kept under `context.source` by ingestion. A unique code names
its campaign and member (coupon_codes); a fixed code names the campaigns that give it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from services.campaigns.campaign_store import Redemption, StoredCampaign
from services.campaigns.model import Tier
from services.campaigns.offers import discount_cost
from services.common.events import AnyEvent

PURCHASE = "purchase"


def coupons_of(context: Mapping[str, Any]) -> set[str]:
    """Every coupon code an order's event carries, upper-cased as codes are issued."""
    found = _codes(context)
    source = context.get("source")
    if isinstance(source, Mapping):
        for key, lines in (("properties", "products"), ("params", "items")):
            fields = source.get(key)
            if isinstance(fields, Mapping):
                found |= _codes(fields)
                listed = fields.get(lines)
                if isinstance(listed, list):
                    for line in listed:
                        if isinstance(line, Mapping):
                            found |= _codes(line)
    return found


def _codes(fields: Mapping[str, Any]) -> set[str]:
    coupon = fields.get("coupon")
    if isinstance(coupon, str) and coupon.strip():
        # Shops join several codes with commas (GA4's documentation does).
        return {part.strip().upper() for part in coupon.split(",") if part.strip()}
    return set()


def fixed_codes(campaigns: Iterable[StoredCampaign]) -> dict[str, list[tuple[str, Tier | None]]]:
    """Fixed code -> the campaigns (and tier) that give it."""
    found: dict[str, list[tuple[str, Tier | None]]] = {}
    for campaign in campaigns:
        offer = campaign.definition.offer
        if offer.coupon_code and offer.coupon == "fixed":
            found.setdefault(offer.coupon_code, []).append((campaign.campaign_id, None))
        for tier in offer.tiers:
            if tier.coupon_code:
                found.setdefault(tier.coupon_code, []).append((campaign.campaign_id, tier))
    return found


def redemptions_in(
    events: Sequence[AnyEvent],
    campaigns: Mapping[str, StoredCampaign],
    unique_code: Callable[[str], tuple[str, str] | None],
    tier_of: Callable[[str, str], str],
) -> list[Redemption]:
    """The redemptions the purchases among `events` make. `unique_code(code)` names the
    campaign and member of a unique code; `tier_of(campaign_id, member_id)` the tier the
    member was offered, by name (for a tiered campaign's cost)."""
    fixed = fixed_codes(campaigns.values())
    found: list[Redemption] = []
    for event in events:
        if event.type != PURCHASE:
            continue
        for code in sorted(coupons_of(event.context)):
            found.extend(_redeemed(event, code, campaigns, fixed, unique_code, tier_of))
    return found


def _redeemed(
    event: AnyEvent,
    code: str,
    campaigns: Mapping[str, StoredCampaign],
    fixed: Mapping[str, list[tuple[str, Tier | None]]],
    unique_code: Callable[[str], tuple[str, str] | None],
    tier_of: Callable[[str, str], str],
) -> list[Redemption]:
    owners = list(fixed.get(code, []))
    given = unique_code(code)
    if given is not None and given[0] in campaigns:
        campaign_id, member_id = given
        name = tier_of(campaign_id, member_id)
        tiers = campaigns[campaign_id].definition.offer.tiers
        owners.append((campaign_id, next((t for t in tiers if t.name == name), None)))
    value = event.order_value()
    redeemed = []
    for campaign_id, tier in owners:
        campaign = campaigns.get(campaign_id)
        if campaign is None:
            continue
        redeemed.append(
            Redemption(
                campaign_id=campaign_id,
                order_key=event.order_id or event.event_id,
                member_id=event.member_id,
                code=code,
                revenue=value,
                cost=discount_cost(campaign.definition, tier, value),
                at=event.timestamp,
            )
        )
    return redeemed
