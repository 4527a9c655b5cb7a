"""Which campaign offers a member gets, on which channel, now: the rules in one place.

Pure: the member (as profiles portrays them), the campaigns, the clock and what each
campaign spent come in; planned exposures and the reasons for what was withheld go out.
The store then records what the frequency caps allow (services/campaigns/campaign_store.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.campaigns.campaign_store import Planned, Spent, StoredCampaign
from services.campaigns.model import CampaignDefinition, Tier

_CONTROL_BUCKETS = 10_000


@dataclass(frozen=True)
class Member:
    """What campaigns needs of a member to target them."""

    member_id: str
    known: bool
    consent: Mapping[str, bool]
    m_score: int | None = None
    spend: float = 0.0
    preferred_channel: str = ""


@dataclass(frozen=True)
class Draft:
    """An offer the member may get, before the caps have their say."""

    campaign: StoredCampaign
    channel: str
    group: str
    tier: Tier | None = None

    @property
    def definition(self) -> CampaignDefinition:
        return self.campaign.definition

    def planned(self) -> Planned:
        offer = self.definition.offer
        fixed = (self.tier.coupon_code if self.tier else None) or offer.coupon_code or ""
        unique = offer.coupon == "unique" and not (self.tier and self.tier.coupon_code)
        return Planned(
            campaign_id=self.campaign.campaign_id,
            group="control" if self.group == "control" else "treatment",
            cap=self.definition.frequency_caps.get(self.channel),  # type: ignore[call-overload]
            offer_id=offer_id(self.campaign.campaign_id, self.tier),
            tier=self.tier.name if self.tier else "",
            code_prefix=offer.code_prefix if unique else "",
            fixed_code="" if unique else fixed,
        )

    def rank(self) -> tuple[int, float, float]:
        """Best first: priority, then the larger percentage, then the larger amount."""
        percent, amount = self.definition.offer.discount(self.tier)
        return (-self.definition.priority, -(percent or 0.0), -(amount or 0.0))


@dataclass
class Plan:
    drafts: list[Draft] = field(default_factory=list)
    # Campaign id -> why it gave the member nothing here.
    withheld: dict[str, str] = field(default_factory=dict)


def offer_id(campaign_id: str, tier: Tier | None) -> str:
    return f"{campaign_id}:{tier.name}" if tier else campaign_id


def in_control(member_id: str, campaign_id: str, share: float) -> bool:
    """Deterministic by member and campaign: the same member is held out of the same
    campaign on every replica and after every restart, and independently per campaign."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{campaign_id}\x00{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _CONTROL_BUCKETS < share * _CONTROL_BUCKETS


def why_not_live(campaign: StoredCampaign, spent: Spent, now: datetime) -> str:
    """Why the campaign cannot offer anything now; empty when it can."""
    definition = campaign.definition
    if definition.status != "active":
        return f"campaign is {definition.status}"
    reason = definition.schedule.why_not(now)
    if reason:
        return reason
    budget = definition.budget
    if budget.max_redemptions is not None and spent.redemptions >= budget.max_redemptions:
        return "budget spent (redemptions)"
    if budget.max_cost is not None and spent.cost >= budget.max_cost:
        return "budget spent (cost)"
    return ""


def best_channel(
    definition: CampaignDefinition, member: Member, responses: Mapping[str, tuple[int, int]]
) -> str | None:
    """The campaign's channel the member answers best: redemptions over exposures, smoothed
    so that an untried channel starts at one half; ties go to the member's preferred
    channel, then to the campaign's order. None when they consent to none."""
    open_: list[str] = [c for c in definition.channels if member.consent.get(c, False)]
    order: list[str] = list(definition.channels)
    if not open_:
        return None

    def score(channel: str) -> tuple[float, bool, int]:
        shown, redeemed = responses.get(channel, (0, 0))
        rate = (redeemed + 1) / (shown + 2)
        return (rate, channel == member.preferred_channel, -order.index(channel))

    return max(open_, key=score)


def plan_offers(
    campaigns: Sequence[StoredCampaign],
    matched: Mapping[str, bool],
    member: Member,
    channel: str,
    now: datetime,
    spent: Mapping[str, Spent],
    responses: Mapping[str, tuple[int, int]],
    mind_quiet_hours: bool = True,
) -> Plan:
    """The drafts (best first) of the campaigns whose audience holds the member
    (`matched` by campaign id), on `channel` or on each of the campaign's channels. An
    export does not `mind_quiet_hours`: its messages say when they may be sent instead."""
    plan = Plan()
    for campaign in campaigns:
        if not matched.get(campaign.campaign_id, False):
            continue
        reason = why_not_live(campaign, spent.get(campaign.campaign_id, Spent()), now)
        if reason:
            plan.withheld[campaign.campaign_id] = reason
            continue
        _draft(plan, campaign, member, channel, now, responses, mind_quiet_hours)
    plan.drafts.sort(key=Draft.rank)
    return plan


def _draft(
    plan: Plan,
    campaign: StoredCampaign,
    member: Member,
    channel: str,
    now: datetime,
    responses: Mapping[str, tuple[int, int]],
    mind_quiet_hours: bool,
) -> None:
    definition = campaign.definition
    asked = [channel] if channel else list(definition.channels)
    reasons = []
    for wanted in asked:
        reason = _why_not_on(
            definition, member, wanted, now if mind_quiet_hours else None, responses
        )
        if reason:
            reasons.append(reason)
            continue
        tier = definition.offer.tier_for(member.m_score, member.spend)
        if definition.offer.tiers and tier is None:
            reasons.append("below every tier")
            continue
        held_out = in_control(member.member_id, campaign.campaign_id, definition.control_share)
        group = "control" if held_out else "treatment"
        plan.drafts.append(Draft(campaign, wanted, group, tier))
        if held_out:
            reasons.append("held out (control group)")
    if reasons:
        plan.withheld[campaign.campaign_id] = "; ".join(dict.fromkeys(reasons))


def _why_not_on(
    definition: CampaignDefinition,
    member: Member,
    channel: str,
    now: datetime | None,
    responses: Mapping[str, tuple[int, int]],
) -> str:
    """Why the campaign offers nothing to the member on the channel; quiet hours only
    when `now` is given."""
    if channel not in definition.channels:
        return f"not on {channel}"
    if not member.consent.get(channel, False):
        return f"no consent for {channel}"
    if definition.channel_choice == "best":
        best = best_channel(definition, member, responses)
        if best != channel:
            return f"best channel is {best}" if best else "no consented channel"
    until = definition.schedule.quiet_until(channel, now) if now else None
    if until is not None:
        return f"quiet hours on {channel} until {until.isoformat()}"
    return ""


def expires_at(definition: CampaignDefinition, now: datetime) -> datetime | None:
    """When an offer made now lapses: its own lifetime, and never after the campaign ends."""
    days = definition.offer.expires_after_days
    ends = definition.schedule.ends_at
    lapses = now + timedelta(days=days) if days else None
    if lapses and ends:
        return min(lapses, ends)
    return lapses or ends


def discount_cost(definition: CampaignDefinition, tier: Tier | None, order_value: float) -> float:
    """What the discount took off an order of `order_value`."""
    percent, amount = definition.offer.discount(tier)
    if percent is not None:
        return round(order_value * percent / 100, 2)
    return round(min(amount or 0.0, order_value), 2)
