"""Synthetic members with the shape of the Online Retail shop, generated in constant memory.

`Shape.fit` reads what a member of the real shop looks like from its purchase events (the
full UCI file, or the bundled sample): how many orders a member places, how many items an
order holds, which items sell (overall and within each category), at what unit prices and
quantities, how long members wait between orders, when their first order falls in the
year, how strongly a member leans to one category, and their countries. The categories and
prices are the catalog's.

`Members` samples histories from those distributions, member after member, with a seed
(the same seed, count and shape give the same events). The data set has no views, so these
are an assumption of the bench, stated in its options: every visit views `views_per_visit`
items on average (drawn from the member's taste, like the purchases), each order is its
own visit, and `browse_per_order` visits on average before each order view without buying.

The events come out as a consumer reads them off the bus (`WireEvent`): a record is one
member's visit, a batch is as many records as the profiles consumer polls at once, and
within a cohort of members the visits are in time order, so a batch speaks of about as many
members as it has records, as in a live stream. Memory holds one cohort at a time.
"""

from __future__ import annotations

import json
import math
import random
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.events import CatalogItem, Event, EventType, WireEvent, WireItem

DAY_S = 86400.0
CURRENCY = "GBP"
# Browse visits before a member's first order fall within this many days of it.
LEAD_DAYS = 30.0
# Seconds between two views of a visit, and from the last view to the purchase.
VIEW_STEP_S = 45.0


class Empirical:
    """Values drawn with the frequencies they had in the data."""

    def __init__(self, counts: Counter[Any]) -> None:
        if not counts:
            raise ValueError("no values to draw from")
        self.counts = counts
        self.values = sorted(counts)
        self._cum: list[float] = []
        total = 0.0
        for value in self.values:
            total += counts[value]
            self._cum.append(total)
        self._total, self._last = total, len(self.values) - 1

    def draw(self, rng: random.Random, k: int = 1) -> list[Any]:
        return rng.choices(self.values, cum_weights=self._cum, k=k)

    def one(self, rng: random.Random) -> Any:
        # What choices(k=1) does, without its set-up: most draws are of one value.
        if not self._last:
            return self.values[0]
        return self.values[bisect_right(self._cum, rng.random() * self._total, 0, self._last)]

    def mean(self) -> float:
        return sum(v * n for v, n in self.counts.items()) / sum(self.counts.values())

    def pairs(self) -> list[list[Any]]:
        return [[_plain(v), self.counts[v]] for v in self.values]

    @classmethod
    def from_pairs(cls, pairs: Sequence[Sequence[Any]]) -> Empirical:
        return cls(Counter({_hashable(v): n for v, n in pairs}))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Shape:
    """The distributions a synthetic member is drawn from (see the module docstring)."""

    source: str
    members: int  # real members fitted from
    window_s: float  # first to last order of the data
    orders: Empirical  # orders per member
    lines: Empirical  # distinct items per order
    quantities: Empirical  # units per order line
    gaps_s: Empirical  # between a member's consecutive orders (minutes, in seconds)
    first_s: Empirical  # a member's first order, after the data's first (minutes, in s)
    tastes: Empirical  # (top category, its share of the member's order lines, 2 dp)
    countries: Empirical
    items: Empirical  # order lines per item: its popularity
    by_category: dict[str, Empirical]  # the same within each category
    prices: dict[str, Empirical]  # unit prices paid per item
    catalog: list[CatalogItem] = field(default_factory=list)

    @classmethod
    def fit(cls, source: str, catalog: Sequence[CatalogItem], events: Sequence[Event]) -> Shape:
        purchases = sorted(
            (e for e in events if e.type == EventType.PURCHASE and e.items),
            key=lambda e: (e.member_id, e.timestamp),
        )
        if not purchases:
            raise ValueError(f"{source}: no purchase events to fit members from")
        categories = {item.item_id: item.category for item in catalog if item.category}
        start = min(e.timestamp for e in purchases)
        end = max(e.timestamp for e in purchases)
        orders: Counter[int] = Counter()
        lines: Counter[int] = Counter()
        quantities: Counter[int] = Counter()
        gaps: Counter[int] = Counter()
        firsts: Counter[int] = Counter()
        tastes: Counter[tuple[str, float]] = Counter()
        countries: Counter[str] = Counter()
        popularity: Counter[str] = Counter()
        prices: dict[str, Counter[float]] = {}
        member, previous, count, liked = None, None, 0, Counter[str]()

        def close_member() -> None:
            if member is None:
                return
            orders[count] += 1
            top, top_lines = max(liked.items(), key=lambda kv: (kv[1], kv[0]))
            tastes[(top, round(top_lines / sum(liked.values()), 2))] += 1

        for event in purchases:
            if event.member_id != member:
                close_member()
                member, previous, count, liked = event.member_id, None, 0, Counter()
                firsts[_minutes(event.timestamp - start)] += 1
                country = event.context.get("country")
                countries[country if isinstance(country, str) else "unknown"] += 1
            if previous is not None:
                gaps[_minutes(event.timestamp - previous)] += 1
            previous = event.timestamp
            count += 1
            lines[len(event.items)] += 1
            for line in event.items:
                category = line.category or categories.get(line.item_id, "other")
                liked[category] += 1
                popularity[line.item_id] += 1
                quantities[line.quantity] += 1
                if line.price is not None:
                    prices.setdefault(line.item_id, Counter())[line.price] += 1
        close_member()
        if not gaps:
            gaps[int(DAY_S)] += 1
        by_category: dict[str, Counter[str]] = {}
        for item_id, n in popularity.items():
            by_category.setdefault(categories.get(item_id, "other"), Counter())[item_id] = n
        known = set(popularity)
        return cls(
            source=source,
            members=sum(orders.values()),
            window_s=max((end - start).total_seconds(), DAY_S),
            orders=Empirical(orders),
            lines=Empirical(lines),
            quantities=Empirical(quantities),
            gaps_s=Empirical(gaps),
            first_s=Empirical(firsts),
            tastes=Empirical(tastes),
            countries=Empirical(countries),
            items=Empirical(popularity),
            by_category={name: Empirical(counts) for name, counts in by_category.items()},
            prices={item_id: Empirical(counts) for item_id, counts in prices.items()},
            catalog=[item for item in catalog if item.item_id in known],
        )

    def category_of(self) -> dict[str, str]:
        return {item.item_id: item.category or "other" for item in self.catalog}

    def summary(self) -> dict[str, Any]:
        """What the fitted distributions say, to print next to the figures."""
        return {
            "source": self.source,
            "real members": self.members,
            "orders per member (mean)": round(self.orders.mean(), 2),
            "items per order (mean)": round(self.lines.mean(), 1),
            "units per line (mean)": round(self.quantities.mean(), 1),
            "days between orders (mean)": round(self.gaps_s.mean() / DAY_S, 1),
            "items": len(self.items.values),
            "categories": len(self.by_category),
            "countries": len(self.countries.values),
        }

    def save(self, path: Path) -> None:
        body = {
            "source": self.source,
            "members": self.members,
            "window_s": self.window_s,
            **{
                name: getattr(self, name).pairs()
                for name in (
                    "orders",
                    "lines",
                    "quantities",
                    "gaps_s",
                    "first_s",
                    "tastes",
                    "countries",
                    "items",
                )
            },
            "by_category": {k: v.pairs() for k, v in self.by_category.items()},
            "prices": {k: v.pairs() for k, v in self.prices.items()},
            "catalog": [item.model_dump(mode="json", exclude_none=True) for item in self.catalog],
        }
        path.write_text(json.dumps(body))

    @classmethod
    def load(cls, path: Path) -> Shape:
        body = json.loads(path.read_text())
        simple = ("orders", "lines", "quantities", "gaps_s", "first_s", "tastes", "countries")
        return cls(
            source=body["source"],
            members=body["members"],
            window_s=body["window_s"],
            **{name: Empirical.from_pairs(body[name]) for name in simple},
            items=Empirical.from_pairs(body["items"]),
            by_category={k: Empirical.from_pairs(v) for k, v in body["by_category"].items()},
            prices={k: Empirical.from_pairs(v) for k, v in body["prices"].items()},
            catalog=[CatalogItem.model_validate(item) for item in body["catalog"]],
        )


def _minutes(delta: timedelta) -> int:
    return round(delta.total_seconds() / 60.0) * 60


@dataclass
class Tally:
    """What was generated, and a fixed-size random sample of the members' RFM figures
    (algorithm R), to pick a segment condition of a wanted size without a second pass."""

    members: int = 0
    events: int = 0
    views: int = 0
    purchases: int = 0
    lines: int = 0
    buyers: int = 0
    records: int = 0
    capacity: int = 100_000
    last_order_s: array[float] = field(default_factory=lambda: array("d"))
    spend: array[float] = field(default_factory=lambda: array("d"))
    _rng: random.Random = field(default_factory=lambda: random.Random("tally"))

    def member(self, last_order_s: float | None, spend: float) -> None:
        self.members += 1
        if last_order_s is None:
            return
        self.buyers += 1
        if len(self.spend) < self.capacity:
            self.last_order_s.append(last_order_s)
            self.spend.append(spend)
            return
        slot = self._rng.randrange(self.buyers)
        if slot < self.capacity:
            self.last_order_s[slot], self.spend[slot] = last_order_s, spend

    def spend_threshold(self, wanted: int, recent_days: float, now_s: float) -> float | None:
        """The spend X for which about `wanted` members ordered within `recent_days` of
        `now_s` and spent at least X; None when fewer than `wanted` ordered that recently."""
        if not self.spend:
            return None
        cutoff = now_s - recent_days * DAY_S
        pairs = zip(self.last_order_s, self.spend, strict=True)
        recent = sorted(s for at, s in pairs if at >= cutoff)
        # Each sampled member stands for buyers / len(sample) members.
        need = round(wanted * len(self.spend) / self.buyers)
        if need < 1 or need > len(recent):
            return None
        return recent[len(recent) - need]

    def as_dict(self) -> dict[str, int]:
        return {
            "members": self.members,
            "buyers": self.buyers,
            "events": self.events,
            "views": self.views,
            "purchases": self.purchases,
            "order lines": self.lines,
            "records": self.records,
        }


class Members:
    """`count` synthetic members drawn from `shape`, as batches of events (see module doc)."""

    def __init__(
        self,
        shape: Shape,
        count: int,
        seed: int,
        *,
        views_per_visit: float = 2.0,
        browse_per_order: float = 1.0,
        cohort: int = 2000,
        now: datetime | None = None,
    ) -> None:
        self.shape = shape
        self.count = count
        self.seed = seed
        self.views_per_visit = views_per_visit
        self.browse_per_order = browse_per_order
        self.cohort = cohort
        self.tally = Tally()
        # Re-dated as the loaders do: the data's last day is the day before `now`.
        now = now or datetime.now(UTC)
        self.start_s = (now - timedelta(days=1)).timestamp() - shape.window_s
        self._categories = shape.category_of()

    @staticmethod
    def member_id(index: int) -> str:
        return f"m{index:07d}"

    def batches(self, records_per_batch: int) -> Iterator[list[WireEvent]]:
        """Every member's events, `records_per_batch` visits at a time."""
        for first in range(0, self.count, self.cohort):
            rng = random.Random(f"{self.seed}:{first}")
            visits: list[tuple[float, list[WireEvent]]] = []
            for index in range(first, min(first + self.cohort, self.count)):
                visits.extend(self._member(rng, index))
            visits.sort(key=lambda visit: visit[0])
            for start in range(0, len(visits), records_per_batch):
                chunk = visits[start : start + records_per_batch]
                self.tally.records += len(chunk)
                yield [event for _, events in chunk for event in events]

    def _member(self, rng: random.Random, index: int) -> list[tuple[float, list[WireEvent]]]:
        shape = self.shape
        member_id = self.member_id(index)
        orders = shape.orders.one(rng)
        category, share = shape.tastes.one(rng)
        gaps = [float(g) for g in shape.gaps_s.draw(rng, orders - 1)] if orders > 1 else []
        span = sum(gaps)
        window = shape.window_s
        if span > window:
            gaps = [g * window / span for g in gaps]
            span = window
        at = self.start_s + min(float(shape.first_s.one(rng)), window - span)
        country = shape.countries.one(rng)
        taste = _Taste(shape, category, share)
        visits: list[tuple[float, list[WireEvent]]] = []
        counter = iter(range(1 << 30))
        spend, previous = 0.0, at - LEAD_DAYS * DAY_S
        for number in range(orders):
            if number:
                at += gaps[number - 1]
            for _ in range(_poisson(rng, self.browse_per_order)):
                when = rng.uniform(previous, at)
                views = self._views(rng, member_id, taste, when, counter, 1)
                visits.append((views[0].timestamp.timestamp(), views))
            previous = at
            order = self._order(rng, member_id, taste, at, number, country, counter)
            spend = round(spend + (order[-1].revenue or 0.0), 2)
            visits.append((order[0].timestamp.timestamp(), order))
        self.tally.member(at if orders else None, spend)
        return visits

    def _views(
        self,
        rng: random.Random,
        member_id: str,
        taste: _Taste,
        before_s: float,
        counter: Iterator[int],
        at_least: int,
    ) -> list[WireEvent]:
        count = max(at_least, _poisson(rng, self.views_per_visit))
        items = taste.pick(rng, count)
        self.tally.views += count
        self.tally.events += count
        return [
            WireEvent(
                event_id=f"{member_id}-{next(counter)}",
                type=EventType.VIEW,
                member_id=member_id,
                timestamp=datetime.fromtimestamp(before_s - VIEW_STEP_S * (count - n), UTC),
                item_id=item_id,
            )
            for n, item_id in enumerate(items)
        ]

    def _order(
        self,
        rng: random.Random,
        member_id: str,
        taste: _Taste,
        at_s: float,
        number: int,
        country: str,
        counter: Iterator[int],
    ) -> list[WireEvent]:
        shape = self.shape
        views = self._views(rng, member_id, taste, at_s, counter, 0)
        wanted = shape.lines.one(rng)
        units: dict[str, int] = {}
        for item_id, quantity in zip(
            taste.pick(rng, wanted), shape.quantities.draw(rng, wanted), strict=True
        ):
            units[item_id] = units.get(item_id, 0) + quantity
        lines = []
        revenue = 0.0
        for item_id, quantity in units.items():
            prices = shape.prices.get(item_id)
            price = prices.one(rng) if prices else None
            revenue += (price or 0.0) * quantity
            lines.append(WireItem(item_id, quantity, price, self._categories.get(item_id)))
        self.tally.purchases += 1
        self.tally.events += 1
        self.tally.lines += len(lines)
        purchase = WireEvent(
            event_id=f"{member_id}-{next(counter)}",
            type=EventType.PURCHASE,
            member_id=member_id,
            timestamp=datetime.fromtimestamp(at_s, UTC),
            items=lines,
            order_id=f"{member_id}-o{number}",
            revenue=round(revenue, 2),
            currency=CURRENCY,
            context={"country": country},
        )
        return [*views, purchase]


class _Taste:
    """A member's items: a share of them from their top category, the rest from anything
    (each by popularity)."""

    def __init__(self, shape: Shape, category: str, share: float) -> None:
        self._anything = shape.items
        self._top = shape.by_category.get(category, shape.items)
        self._share = share

    def pick(self, rng: random.Random, count: int) -> list[str]:
        if count <= 0:
            return []
        top = sum(1 for _ in range(count) if rng.random() < self._share)
        return self._top.draw(rng, top) + self._anything.draw(rng, count - top)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method: means here are small)."""
    if mean <= 0:
        return 0
    limit, n, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        n += 1
        product *= rng.random()
    return n
