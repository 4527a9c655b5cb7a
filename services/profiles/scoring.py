"""RFM scores and price distributions: boundaries computed now and then, applied at every read.

Scores are quintiles over the *scored population*: the members whose last order falls
within the scoring window (`RECOFLEET_PROFILES_SCORING_WINDOW_DAYS`, 365 by default). The
boundaries are recomputed on a schedule and on demand, stored, and applied to a member's
current figures whenever the portrait is read, so an event changes the member's scores at
once, without a recomputation.

Method, per figure (frequency, monetary, recency in days):

* the population's values sorted ascending, n of them; boundary k (k = 1..4) is the value
  at rank ceil(k * n / 5) (nearest rank, 1-based);
* frequency and monetary score 1 + the number of boundaries the member's value exceeds
  (strictly): up to b1 scores 1, above b4 scores 5;
* recency scores the other way round: 5 - the number of boundaries the member's recency
  exceeds (up to b1 days scores 5: the most recent fifth).

Ties stay together: members with the same value get the same score, even when that makes
classes unequal or leaves one empty (a frequency of 1 is most common). Members who never
ordered have no scores; members whose last order is older than the window are scored
against the same boundaries (their recency is past every boundary: R = 1). Until at least
MIN_POPULATION members are in the population there are no boundaries and no scores.

Price distributions, per category: the prices of the catalog's items of that category
(QUANTILE_POINTS quantiles, linear interpolation), or, for a category with fewer than
MIN_PRICES priced catalog items, the members' mean paid unit prices in it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

MIN_POPULATION = 5
MIN_PRICES = 5
QUANTILE_POINTS = 21  # 0%, 5%, ..., 100%


class Scoring(msgspec.Struct, frozen=True):
    """Everything a portrait needs from the whole store, as of `computed_at`."""

    computed_at: datetime
    window_days: float
    population: int
    recency: tuple[float, ...] = ()  # four boundaries in days, ascending
    frequency: tuple[float, ...] = ()
    monetary: tuple[float, ...] = ()
    # category -> QUANTILE_POINTS prices, ascending; where they came from
    prices: dict[str, tuple[float, ...]] = {}
    price_sources: dict[str, str] = {}

    @property
    def scored(self) -> bool:
        return len(self.frequency) == 4


@dataclass(frozen=True)
class RfmScores:
    r: int
    f: int
    m: int


def quintile_boundaries(values: Iterable[float]) -> tuple[float, ...]:
    """The four nearest-rank quintile boundaries of `values` (empty below MIN_POPULATION)."""
    ordered = sorted(values)
    n = len(ordered)
    if n < MIN_POPULATION:
        return ()
    return tuple(float(ordered[math.ceil(k * n / 5) - 1]) for k in range(1, 5))


def score_up(value: float, boundaries: Sequence[float]) -> int:
    """1..5: more is better (frequency, monetary)."""
    return 1 + sum(1 for b in boundaries if value > b)


def score_down(value: float, boundaries: Sequence[float]) -> int:
    """1..5: less is better (recency in days)."""
    return 5 - sum(1 for b in boundaries if value > b)


def rfm_scores(
    scoring: Scoring | None, recency_days: float | None, frequency: int, monetary: float
) -> RfmScores | None:
    """The member's scores, or None without an order or without boundaries."""
    if scoring is None or not scoring.scored or recency_days is None or frequency < 1:
        return None
    return RfmScores(
        r=score_down(recency_days, scoring.recency),
        f=score_up(frequency, scoring.frequency),
        m=score_up(monetary, scoring.monetary),
    )


def quantiles(values: Iterable[float], points: int = QUANTILE_POINTS) -> tuple[float, ...]:
    """`points` evenly spaced quantiles (first = min, last = max), linearly interpolated."""
    ordered = sorted(values)
    if not ordered:
        return ()
    last = len(ordered) - 1
    found = []
    for i in range(points):
        position = i * last / (points - 1)
        low = math.floor(position)
        high = min(low + 1, last)
        found.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return tuple(round(q, 6) for q in found)


def percentile_of(value: float, points: Sequence[float]) -> float:
    """Where `value` falls in the distribution the quantile `points` describe, 0..1.

    Between two points, linearly; on a run of equal points (many items at one price), the
    middle of the run, so that a price shared by a third of the items sits mid-third.
    """
    if value < points[0]:
        return 0.0
    if value > points[-1]:
        return 1.0
    steps = len(points) - 1
    low = bisect.bisect_left(points, value)
    high = bisect.bisect_right(points, value) - 1
    if low <= high:
        return (low + high) / 2 / steps
    below = high  # points[below] < value < points[below + 1]
    span = points[below + 1] - points[below]
    return (below + (value - points[below]) / span) / steps


def price_distributions(
    catalog: dict[str, list[float]], paid: dict[str, list[float]]
) -> tuple[dict[str, tuple[float, ...]], dict[str, str]]:
    """Per category: quantiles of catalog prices, else of members' mean paid prices."""
    prices: dict[str, tuple[float, ...]] = {}
    sources: dict[str, str] = {}
    for category in sorted(set(catalog) | set(paid)):
        for source, values in (("catalog", catalog.get(category)), ("paid", paid.get(category))):
            if values and len(values) >= MIN_PRICES:
                prices[category] = quantiles(values)
                sources[category] = source
                break
    return prices, sources


def compute(
    *,
    computed_at: datetime,
    window_days: float,
    population: Sequence[tuple[float, int, float]],
    catalog_prices: dict[str, list[float]],
    paid_prices: dict[str, list[float]],
) -> Scoring:
    """The scoring of a population of (recency days, frequency, monetary)."""
    prices, sources = price_distributions(catalog_prices, paid_prices)
    return Scoring(
        computed_at=computed_at,
        window_days=window_days,
        population=len(population),
        recency=quintile_boundaries(r for r, _, _ in population),
        frequency=quintile_boundaries(f for _, f, _ in population),
        monetary=quintile_boundaries(m for _, _, m in population),
        prices=prices,
        price_sources=sources,
    )


@dataclass
class ScoreSchedule:
    """When the profiles service recomputes: every `interval_s`, and as soon as the orders
    applied since the last computation reach `stale_share` of its population (so a store
    filling up, like a fresh fleet catching up with a loaded sample, gets scores within
    one check)."""

    interval_s: float
    stale_share: float

    def due(self, scoring: Scoring | None, now: datetime, orders_since: int) -> bool:
        if scoring is None:
            return True
        if (now - scoring.computed_at).total_seconds() >= self.interval_s:
            return True
        return orders_since > 0 and orders_since >= self.stale_share * scoring.population


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Scoring)


def encode(scoring: Scoring) -> str:
    return _encoder.encode(scoring).decode("utf-8")


def decode(raw: str | bytes) -> Scoring:
    return _decoder.decode(raw)
