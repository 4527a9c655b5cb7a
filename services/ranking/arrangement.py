"""Merchandising's arrangement of a ranked list: boosts and buries, promoted shares, pins.

Campaigns' MerchandisingService says which items move and why (services/campaigns/
merchandising.py); this applies it to the ranker's order, in three steps:

1. **Adjustments** weigh items in rank space, so that a weight means the same whatever the
   ranker's score scale: an item at 0-based position p of n ranked items has the key
   `(1 - p / n) + weight`, and the list is sorted by key. A weight of 1 lifts an item past
   every item without one (their keys are in (0, 1]); 0.5 about half the list; a negative
   weight (bury) moves it down alike. The weights of several rules on one item add up.
2. **Promotions** make sure at least `ceil(share * limit)` slots go to a campaign's items,
   the best ranked of them first, spread over the list (the k-th of q promoted items is at
   or before position ceil(k * limit / q)) rather than piled at its end.
3. **Pins** hold items at their positions (1-based), after everything else (diversity
   included) so that a pin's position holds. A taken position sends the next pin to the
   next free one; with fewer items than a pin's position, the pin goes last.

Each item an arrangement moves names the rule in its reasons ("pinned by rule home-hero",
"boosted by rule garden-week", "in campaign spring-sale").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from dataclasses import replace

from services.gen.recofleet.common.v1 import common_pb2
from services.ranking.rankers import RankedItem

Diversify = Callable[[list[RankedItem], int], list[RankedItem]]


def _first(items: list[RankedItem], limit: int) -> list[RankedItem]:
    return items[:limit]


def arranges(arrangement: common_pb2.Arrangement) -> bool:
    """Whether the arrangement moves anything (an empty one leaves the ranker's order)."""
    return bool(arrangement.pins or arrangement.adjustments or arrangement.promotions)


def arrange(
    ranked: Sequence[RankedItem],
    arrangement: common_pb2.Arrangement,
    limit: int,
    diversify: Diversify = _first,
) -> list[RankedItem]:
    """The first `limit` of `ranked` (best first, every candidate) as the arrangement says;
    `diversify` caps categories (services/ranking/diversity.py) between promotions and pins."""
    by_id = {item.item_id: item for item in ranked}
    pins = _placeable(arrangement.pins, by_id, limit)
    pinned = {pin.item_id for pin in pins}
    rest = [
        item for item in adjusted(ranked, arrangement.adjustments) if item.item_id not in pinned
    ]
    slots = limit - len(pins)
    rest = promoted(rest, arrangement.promotions, slots, limit, pinned)
    shown = diversify(rest, slots) if slots > 0 else []
    return pinned_at(shown, [(pin, by_id[pin.item_id]) for pin in pins], limit)


def adjusted(
    ranked: Sequence[RankedItem], adjustments: Sequence[common_pb2.Adjustment]
) -> list[RankedItem]:
    """`ranked` sorted by rank-space key plus each item's weights, the rules named."""
    if not adjustments:
        return list(ranked)
    weights: dict[str, float] = {}
    reasons: dict[str, list[str]] = {}
    for adjustment in adjustments:
        weights[adjustment.item_id] = weights.get(adjustment.item_id, 0.0) + adjustment.weight
        verb = "boosted" if adjustment.weight > 0 else "buried"
        reasons.setdefault(adjustment.item_id, []).append(f"{verb} by rule {adjustment.rule}")
    n = len(ranked)
    keyed = [
        ((1 - position / n) + weights.get(item.item_id, 0.0), -position, item)
        for position, item in enumerate(ranked)
    ]
    keyed.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
    return [_with_reasons(item, reasons.get(item.item_id, [])) for _, _, item in keyed]


def promoted(
    ordered: list[RankedItem],
    promotions: Sequence[common_pb2.Promotion],
    slots: int,
    limit: int,
    pinned: Container[str] = frozenset(),
) -> list[RankedItem]:
    """`ordered` with each promotion's items moved up to take their share of the `limit`
    slots (those of its items that are pinned count towards it) within the first `slots`."""
    if not promotions or slots <= 0:
        return ordered
    owner: dict[str, int] = {}
    for index, promotion in enumerate(promotions):
        for item_id in promotion.item_ids:
            owner.setdefault(item_id, index)
    quotas = [
        _quota(index, p, ordered, owner, slots, limit, pinned) for index, p in enumerate(promotions)
    ]
    merged = _merged(ordered, owner, quotas, slots)
    return [_promoted_reason(item, owner, promotions) for item in merged]


def share_of(share: float, limit: int) -> int:
    """Slots a share of `limit` takes, rounded up: 0.07 of 100 is 7 slots, though
    0.07 * 100 is a hair above 7 in floating point."""
    return math.ceil(round(share * limit, 9))


def _quota(
    index: int,
    promotion: common_pb2.Promotion,
    ordered: list[RankedItem],
    owner: dict[str, int],
    slots: int,
    limit: int,
    pinned: Container[str],
) -> int:
    """The promotion's slots among the unpinned: its share less its pinned items, at most
    what it has to show and what there is room for."""
    present = sum(1 for item in ordered if owner.get(item.item_id) == index)
    share = share_of(promotion.share, limit) - sum(1 for i in promotion.item_ids if i in pinned)
    return min(share, present, slots)


def _merged(
    ordered: list[RankedItem], owner: dict[str, int], quotas: list[int], slots: int
) -> list[RankedItem]:
    """The first `slots` in order, except that a promotion short of its quota by the
    position its next item is due takes that position with its best remaining item."""
    remaining = list(ordered)
    placed = [0] * len(quotas)
    merged: list[RankedItem] = []
    for position in range(1, min(slots, len(ordered)) + 1):
        due = next(
            (
                index
                for index, quota in enumerate(quotas)
                if placed[index] < quota
                and position >= math.ceil((placed[index] + 1) * slots / quota)
            ),
            None,
        )
        pick = (
            0
            if due is None
            else next(n for n, item in enumerate(remaining) if owner.get(item.item_id) == due)
        )
        item = remaining.pop(pick)
        merged.append(item)
        index = owner.get(item.item_id)
        if index is not None:
            placed[index] += 1
    return merged + remaining


def _promoted_reason(
    item: RankedItem, owner: dict[str, int], promotions: Sequence[common_pb2.Promotion]
) -> RankedItem:
    index = owner.get(item.item_id)
    return item if index is None else _with_reasons(item, [promotions[index].reason])


def _placeable(
    pins: Sequence[common_pb2.Pin], by_id: dict[str, RankedItem], limit: int
) -> list[common_pb2.Pin]:
    """The pins of ranked items, one per item, at their positions within the limit: a taken
    position gives the next free one (pins come in the order they win)."""
    taken: set[int] = set()
    seen: set[str] = set()
    placed = []
    for pin in pins:
        if pin.item_id not in by_id or pin.item_id in seen:
            continue
        position = max(pin.position, 1)
        while position in taken:
            position += 1
        if position > limit:
            continue
        taken.add(position)
        seen.add(pin.item_id)
        placed.append(common_pb2.Pin(item_id=pin.item_id, position=position, rule=pin.rule))
    return placed


def pinned_at(
    shown: list[RankedItem], pins: Sequence[tuple[common_pb2.Pin, RankedItem]], limit: int
) -> list[RankedItem]:
    """`shown` with each pinned item at its position; the others keep their order around
    them, and a pin past the end of a short list goes last."""
    slots: list[RankedItem | None] = [None] * limit
    for pin, item in pins:
        slots[pin.position - 1] = _with_reasons(item, [f"pinned by rule {pin.rule}"])
    others = iter(shown)
    for position, taken in enumerate(slots):
        if taken is None:
            slots[position] = next(others, None)
    return [item for item in slots if item is not None]


def _with_reasons(item: RankedItem, reasons: list[str]) -> RankedItem:
    if not reasons:
        return item
    return replace(item, reasons=[*item.reasons, *reasons])
