"""Redemptions: purchases that carry a campaign's coupon code, each order counted once.

A code is read where each source puts it (services/common/coupons.py). A unique code names
its campaign and member (the coupon_codes table); a fixed code names the campaigns that
give it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from services.campaigns.campaign_store import Redemption, StoredCampaign
from services.campaigns.model import Tier
from services.campaigns.offers import discount_cost
from services.common.coupons import coupon_codes
from services.common.events import AnyEvent

PURCHASE = "purchase"


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
        for code in coupon_codes(event.context or {}):
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
