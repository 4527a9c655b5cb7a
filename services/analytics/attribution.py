"""Attribution: which impression a click, an add to cart or a purchase is owed to.

An *impression* is one recommendation answer as shown: an `impression` event carrying the
answer's `recommendation_id`, the items in the order shown and, in `context`, the placement,
the experiment and variant, the model, whether the answer was degraded and how long the
gateway took to compose it (`latency_ms`, for the latency guardrail). An impression
without a `recommendation_id` (a shop's own product list view) is no recommendation and is
left out. An *outcome* is a `click`, `add_to_cart` or `purchase` of a member.

The rules, as `attribute` and `refunded` apply them:

1. **Named**: an outcome carrying the `recommendation_id` of an impression shown to the same
   member is attributed to that impression, whenever it happened.
2. **Last touch**: otherwise, to the latest impression shown to the member within the
   attribution window before the outcome (`at - window <= shown_at <= at`) that showed one
   of the outcome's items; of two shown at the same instant, the greater recommendation id
   (any fixed choice, so that every replay agrees).
3. Otherwise the outcome is not attributed.
4. **Revenue**: a purchase's attributed revenue is the value of its lines whose items that
   impression showed, quantity x unit price. A line without a price is worth an equal share
   per unit of what the purchase's stated `revenue` leaves after its priced lines (so a
   one-line purchase with a revenue and no price is worth its revenue), else nothing.
   Clicks and carts carry no revenue. A purchase attributed by rule 1 whose items the
   impression did not show still counts as an attributed purchase, worth 0.
5. **Refunds** (matched to purchases by member and `order_id`) reverse attributed revenue:
   each refunded line whose item was attributed reverses its quantity (at most the units
   bought) at its refunded unit price (rule 4's, or the purchase's when the refund gives
   none); a refund without lines reverses the share of the order's value it states
   (refunded revenue / order value) of every attributed purchase of the order. Never more
   than was attributed; refunds apply in time order. A refund without an order id, or of
   an order with nothing attributed, reverses nothing (it still lowers the member's spend).
6. **Once**: an outcome is attributed to one impression at most, and applying an event again
   (same `event_id`) changes nothing. Arrival order does not matter: impressions travel on a
   topic of their own, not ordered with the members' events, so the store keeps every
   outcome and attributes it again when an impression it may be owed to arrives. The result
   is a function of what was received, not of the order it came in.
7. **Members**: the events and impressions of a visitor linked to a member count for the
   member (services/common/members.py), from before the link too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.analytics.campaigns import coupon_of
from services.common.events import AnyEvent, EventType

CLICK = EventType.CLICK.value
ADD_TO_CART = EventType.ADD_TO_CART.value
PURCHASE = EventType.PURCHASE.value
REFUND = EventType.REFUND.value
# The event types kept as outcomes; refunds only reverse purchases.
OUTCOME_KINDS = frozenset({CLICK, ADD_TO_CART, PURCHASE, REFUND})
# How an outcome was attributed (rules 1 and 2).
NAMED = "recommendation_id"
LAST_TOUCH = "shown_item"
# Longest text kept from an impression's context (placement, variant, experiment, model).
CONTEXT_TEXT = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Impression:
    """A recommendation answer as shown to a member."""

    recommendation_id: str
    member_id: str
    shown_at: datetime
    item_ids: tuple[str, ...]
    placement: str = ""
    experiment_id: str = ""
    variant: str = ""
    model: str = ""
    degraded: bool = False
    # The gateway's serving latency of the answer; None when the impression does not say.
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """An item of an outcome; `unit_price` None when neither a price nor a revenue says it."""

    item_id: str
    quantity: int
    unit_price: float | None


@dataclass(frozen=True, slots=True)
class Attribution:
    """The impression an outcome is owed to, how (NAMED or LAST_TOUCH), the outcome's items
    it showed, and for a purchase the revenue of those items."""

    recommendation_id: str
    experiment_id: str
    variant: str
    shown_at: datetime
    by: str
    item_ids: tuple[str, ...]
    revenue: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A click, add to cart, purchase or refund as kept, attributed or not.

    `amount` is a purchase's order value or a refund's refunded revenue (stated, else the
    sum of its priced lines); 0 for clicks and carts. `refunded` is the attributed revenue
    of a purchase its order's refunds reverse.
    """

    event_id: str
    kind: str
    member_id: str
    at: datetime
    lines: tuple[Line, ...]
    claimed: str | None = None
    order_id: str | None = None
    amount: float = 0.0
    attribution: Attribution | None = None
    refunded: float = 0.0
    # The coupon code a purchase's event carried (services/analytics/campaigns.coupon_of).
    coupon: str | None = None


def impression_of(event: AnyEvent) -> Impression | None:
    """The impression an `impression` event records, None when it is no recommendation."""
    if event.type != EventType.IMPRESSION or not event.recommendation_id:
        return None
    context = event.context
    return Impression(
        recommendation_id=event.recommendation_id,
        member_id=event.member_id,
        shown_at=event.timestamp,
        item_ids=tuple(line.item_id for line in event.lines()),
        placement=_text(context.get("placement")),
        experiment_id=_text(context.get("experiment_id")),
        variant=_text(context.get("variant")),
        model=_text(context.get("model")),
        degraded=context.get("degraded") is True,
        latency_ms=_latency(context.get("latency_ms")),
    )


def outcome_of(event: AnyEvent) -> Outcome | None:
    """The outcome an event is, unattributed; None for the types that are none."""
    kind = event.type.value
    if kind not in OUTCOME_KINDS:
        return None
    lines = priced_lines(event)
    amount = event.order_value() if kind in (PURCHASE, REFUND) else 0.0
    return Outcome(
        event_id=event.event_id,
        kind=kind,
        member_id=event.member_id,
        at=event.timestamp,
        lines=lines,
        claimed=event.recommendation_id or None,
        order_id=event.order_id or None,
        amount=amount,
        coupon=coupon_of(event.context) if kind == PURCHASE and event.context else None,
    )


def priced_lines(event: AnyEvent) -> tuple[Line, ...]:
    """The event's lines with their unit prices (rule 4): a line's own price, else an equal
    share per unit of what the stated revenue leaves after the priced lines, else None."""
    lines = event.lines()
    unpriced_units = sum(line.quantity for line in lines if line.price is None)
    share: float | None = None
    if unpriced_units and event.revenue is not None:
        priced = sum(line.quantity * line.price for line in lines if line.price is not None)
        share = max(event.revenue - priced, 0.0) / unpriced_units
    return tuple(
        Line(line.item_id, line.quantity, line.price if line.price is not None else share)
        for line in lines
    )


def attribute(
    outcome: Outcome,
    named: Impression | None,
    shown: Iterable[Impression],
    window: timedelta,
) -> Attribution | None:
    """The impression `outcome` is owed to (rules 1 to 4), or None.

    `named` is the impression of the outcome's recommendation_id, if the store knows one;
    `shown` the member's impressions around the outcome (others are ignored).
    """
    if outcome.kind not in (CLICK, ADD_TO_CART, PURCHASE):
        return None
    touch: Impression | None
    if named is not None and _names(outcome, named):
        touch, by = named, NAMED
    else:
        touch, by = last_touch(outcome, shown, window), LAST_TOUCH
    if touch is None:
        return None
    on_show = set(touch.item_ids)
    kept = [line for line in outcome.lines if line.item_id in on_show]
    revenue = 0.0
    if outcome.kind == PURCHASE:
        revenue = sum(line.quantity * (line.unit_price or 0.0) for line in kept)
    return Attribution(
        recommendation_id=touch.recommendation_id,
        experiment_id=touch.experiment_id,
        variant=touch.variant,
        shown_at=touch.shown_at,
        by=by,
        item_ids=tuple(dict.fromkeys(line.item_id for line in kept)),
        revenue=revenue,
    )


def last_touch(
    outcome: Outcome, shown: Iterable[Impression], window: timedelta
) -> Impression | None:
    """The latest of the member's impressions within `window` before the outcome that
    showed one of its items (rule 2)."""
    items = {line.item_id for line in outcome.lines}
    earliest = outcome.at - window
    best: Impression | None = None
    for impression in shown:
        if impression.member_id != outcome.member_id:
            continue
        if not earliest <= impression.shown_at <= outcome.at:
            continue
        if items.isdisjoint(impression.item_ids):
            continue
        if best is None or (impression.shown_at, impression.recommendation_id) > (
            best.shown_at,
            best.recommendation_id,
        ):
            best = impression
    return best


def may_claim(impression: Impression, outcome: Outcome, window: timedelta) -> bool:
    """Whether `impression` could be what `outcome` is owed to, by either rule: the store
    attributes such outcomes again when the impression arrives after them."""
    if impression.member_id != outcome.member_id:
        return False
    if _names(outcome, impression):
        return True
    within = impression.shown_at <= outcome.at <= impression.shown_at + window
    return within and not {line.item_id for line in outcome.lines}.isdisjoint(impression.item_ids)


def refunded(purchases: Sequence[Outcome], refunds: Sequence[Outcome]) -> dict[str, float]:
    """Per purchase of one order (by event id), the attributed revenue its refunds reverse
    (rule 5). Every purchase of the order is in the answer, 0 when nothing is reversed."""
    reversed_ = {p.event_id: 0.0 for p in purchases}
    attributed = sorted(
        (p for p in purchases if p.attribution is not None and p.attribution.revenue > 0),
        key=lambda p: (p.at, p.event_id),
    )
    if not attributed:
        return reversed_
    left = {p.event_id: _revenue(p) for p in attributed}
    units = {(p.event_id, item): _units_bought(p, item) for p in attributed for item in _items(p)}
    order_value = sum(p.amount for p in purchases)
    for refund in sorted(refunds, key=lambda r: (r.at, r.event_id)):
        if refund.lines:
            for line in refund.lines:
                _reverse_line(line, attributed, left, units, reversed_)
        elif order_value > 0:
            share = min(refund.amount / order_value, 1.0)
            for purchase in attributed:
                take = min(share * _revenue(purchase), left[purchase.event_id])
                left[purchase.event_id] -= take
                reversed_[purchase.event_id] += take
    return reversed_


def _reverse_line(
    line: Line,
    attributed: Sequence[Outcome],
    left: dict[str, float],
    units: dict[tuple[str, str], int],
    reversed_: dict[str, float],
) -> None:
    wanted = line.quantity
    for purchase in attributed:
        key = (purchase.event_id, line.item_id)
        if wanted <= 0:
            return
        if units.get(key, 0) <= 0 or left[purchase.event_id] <= 0:
            continue
        taken = min(wanted, units[key])
        price = line.unit_price if line.unit_price is not None else _unit_price(purchase, line)
        amount = min(taken * price, left[purchase.event_id])
        units[key] -= taken
        wanted -= taken
        left[purchase.event_id] -= amount
        reversed_[purchase.event_id] += amount


def _revenue(purchase: Outcome) -> float:
    return purchase.attribution.revenue if purchase.attribution is not None else 0.0


def _items(purchase: Outcome) -> tuple[str, ...]:
    return purchase.attribution.item_ids if purchase.attribution is not None else ()


def _units_bought(purchase: Outcome, item_id: str) -> int:
    return sum(line.quantity for line in purchase.lines if line.item_id == item_id)


def _unit_price(purchase: Outcome, refunded_line: Line) -> float:
    """What the purchase paid per unit of the item (a mean over its lines of that item)."""
    lines = [line for line in purchase.lines if line.item_id == refunded_line.item_id]
    units = sum(line.quantity for line in lines)
    value = sum(line.quantity * (line.unit_price or 0.0) for line in lines)
    return value / units if units else 0.0


def describe(window: timedelta) -> str:
    """The rules in words, for a report's reader."""
    hours = window.total_seconds() / 3600
    return (
        "A click, add to cart or purchase carrying the recommendation_id of an impression "
        "shown to the member is attributed to it; otherwise to the latest impression that "
        f"showed one of its items to the member within {hours:g} h before it (last touch). "
        "A purchase's revenue is quantity x unit price of its lines whose items that "
        "impression showed; refunds of the order reverse it. Each outcome counts once; a "
        "visitor's events count for the member they were linked to. Members are counted in "
        "the variant they were shown first."
    )


def _names(outcome: Outcome, impression: Impression) -> bool:
    return (
        outcome.claimed == impression.recommendation_id
        and outcome.member_id == impression.member_id
    )


def _latency(value: Any) -> float | None:
    """A context's latency in ms as kept: a finite, non-negative number, else None (a shop's
    own impression may say anything there; a wrong figure must not move a percentile)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    latency = float(value)
    return latency if math.isfinite(latency) and latency >= 0 else None


def _text(value: Any) -> str:
    """A context value as stored text: strings only, no control characters, bounded."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub("", value)[:CONTEXT_TEXT]
