"""Merchandising rules applied to every recommendation list, and offer eligibility."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.campaigns.settings import WelcomeOffer
from services.common.candidates import CandidateLike

C = TypeVar("C", bound=CandidateLike)


@dataclass(frozen=True)
class Removal:
    item_id: str
    reason: str


@dataclass(frozen=True)
class Filtered(Generic[C]):
    kept: list[C]
    removed: list[Removal]


def apply_rules(
    candidates: Sequence[C],
    *,
    purchased: Iterable[str],
    excluded: Iterable[str],
    out_of_stock: Callable[[Sequence[str]], set[str]],
) -> Filtered[C]:
    """Drop what a shop must never recommend: bought already, excluded by the caller, sold out.

    Items the catalog does not know are kept: a missing catalog entry is no reason to hide
    an item the member is likely to want.
    """
    bought, asked = set(purchased), set(excluded)
    sold_out = out_of_stock([c.item_id for c in candidates])
    kept: list[C] = []
    removed: list[Removal] = []
    seen: set[str] = set()
    for candidate in candidates:
        reason = _reason(candidate.item_id, bought, asked, sold_out, seen)
        if reason:
            removed.append(Removal(candidate.item_id, reason))
        else:
            kept.append(candidate)
        seen.add(candidate.item_id)
    return Filtered(kept, removed)


def _reason(
    item_id: str, bought: set[str], asked: set[str], sold_out: set[str], seen: set[str]
) -> str:
    if item_id in seen:
        return "duplicate"
    if item_id in asked:
        return "excluded"
    if item_id in bought:
        return "purchased"
    if item_id in sold_out:
        return "out_of_stock"
    return ""


@dataclass(frozen=True)
class Offer:
    offer_id: str
    campaign_id: str
    title: str
    description: str
    coupon_code: str
    discount_percent: float
    channels: list[str] = field(default_factory=list)


def eligible_offers(orders: int, channel: str, welcome: WelcomeOffer) -> list[Offer]:
    """Offers for a member with `orders` past orders, on `channel` (any channel when empty)."""
    offers = []
    if welcome.enabled and orders == 0 and (not channel or channel in welcome.channels):
        offers.append(
            Offer(
                offer_id=f"welcome:{welcome.coupon_code}",
                campaign_id="welcome",
                title=welcome.title,
                description=f"{welcome.discount_percent:g}% off a first order",
                coupon_code=welcome.coupon_code,
                discount_percent=welcome.discount_percent,
                channels=list(welcome.channels),
            )
        )
    return offers
