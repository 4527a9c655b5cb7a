"""Fusing the candidate sources: each source's ranks turned into hit probabilities.

Sources score on scales that cannot be compared (an inner product, a purchase count, a
co-occurrence). Training measures, on the tail of the data held out, how often each
source's item at each rank was then bought (`Calibration`); serving reads a proposal's
rank as that probability, and an item several sources propose gets the best of their
chances plus a tenth of the others' (the sources are far from independent: popular items
are trending, bought together and in the member's categories at once, so a noisy-or
over-counts them; on Online Retail it lost to this by 0.6 points of NDCG). So the data
decides the mix: in a shop where
members rebuy, buy-again outranks ALS; where nobody rebuys (ratings of films, say), it
falls to the bottom by itself. A placement's weights then scale what was measured.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

Scored = list[tuple[str, float]]

# When nothing could be measured (too little data): every source alike, falling with rank.
PRIOR_TOP = 0.05
# A measured rate is shrunk toward the prior as if it came with this many extra members.
PRIOR_WEIGHT = 20.0
# Proposals per point of a strength curve.
STRENGTH_POINT = 200
# What each further source that proposes an item adds, per unit of its chance.
AGREEMENT = 0.1


def prior(rank: int) -> float:
    return PRIOR_TOP / math.sqrt(rank)


@dataclass
class Calibration:
    """Per source, the hit probability at rank 1, 2, …; beyond the measured ranks it falls
    as 1/√rank from the last one."""

    by_source: dict[str, list[float]] = field(default_factory=dict)
    measured_on: int = 0
    # Per source that says how strongly it proposes an item: the hit probability at each
    # measured strength (ascending), read in place of the rank's.
    by_strength: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    # Each curve as an array, made on first use: fusion reads whole lists of ranks at once.
    _arrays: dict[str, np.ndarray | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def probability(self, source: str, rank: int, strength: float | None = None) -> float:
        points = self.by_strength.get(source)
        if points is not None and strength is not None:
            return float(np.interp(strength, points[0], points[1]))
        curve = self.by_source.get(source)
        if not curve:
            return prior(rank)
        if rank <= len(curve):
            return curve[rank - 1]
        return curve[-1] * math.sqrt(len(curve) / rank)

    def chances(self, source: str, count: int, strengths: Sequence[float] = ()) -> np.ndarray:
        """`probability` at ranks 1 to `count`, each rank read by its strength where
        `strengths` gives one (NaN: none): the same figures, a list at a time."""
        ranks = np.arange(1, count + 1, dtype=np.float64)
        curve = self._curve(source)
        if curve is None:
            by_rank = PRIOR_TOP / np.sqrt(ranks)
        else:
            kept = min(count, len(curve))
            by_rank = curve[-1] * np.sqrt(len(curve) / ranks)
            by_rank[:kept] = curve[:kept]
        points = self.by_strength.get(source)
        if points is None or not len(strengths):
            return by_rank
        given = np.asarray(strengths, dtype=np.float64)
        read = np.interp(given, points[0], points[1])
        return np.where(np.isnan(given), by_rank, read)

    def _curve(self, source: str) -> np.ndarray | None:
        if source not in self._arrays:
            measured = self.by_source.get(source)
            self._arrays[source] = np.array(measured, dtype=np.float64) if measured else None
        return self._arrays[source]

    def to_json(self) -> dict[str, object]:
        return {
            "by_source": self.by_source,
            "measured_on": self.measured_on,
            "by_strength": {s: {"strength": x, "p": y} for s, (x, y) in self.by_strength.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Calibration:
        curves = raw["by_source"]
        if not isinstance(curves, dict):
            raise ValueError("calibration: by_source is not an object")
        measured = raw.get("measured_on", 0)
        strengths = raw.get("by_strength", {})
        if not isinstance(strengths, dict):
            raise ValueError("calibration: by_strength is not an object")
        return cls(
            {str(s): [float(p) for p in c] for s, c in curves.items()},
            int(measured) if isinstance(measured, int | float) else 0,
            {
                str(s): ([float(x) for x in c["strength"]], [float(p) for p in c["p"]])
                for s, c in strengths.items()
            },
        )


def fit_curve(hits: np.ndarray, asked: np.ndarray) -> list[float]:
    """A non-increasing hit-rate curve over ranks from hits and lists long enough per rank,
    each rank's rate shrunk toward the prior so that sparse ranks do not swing."""
    ranks = np.arange(1, len(hits) + 1)
    priors = np.array([prior(int(r)) for r in ranks])
    rates = (hits + PRIOR_WEIGHT * priors) / (asked + PRIOR_WEIGHT)
    fitted = IsotonicRegression(increasing=False, y_min=1e-6, y_max=1.0).fit_transform(
        ranks, rates, sample_weight=asked + 1.0
    )
    return [round(float(p), 6) for p in fitted]


def fit_strengths(
    strengths: np.ndarray, hits: np.ndarray, per_point: int = STRENGTH_POINT
) -> tuple[list[float], list[float]]:
    """A non-decreasing hit-rate curve over a source's strengths: proposals sorted by
    strength in groups of `per_point`, each group's rate shrunk toward the source's mean
    rate, made monotone, and kept at the points where it changes (and both ends)."""
    order = np.argsort(strengths, kind="stable")
    groups = np.array_split(order, max(len(order) // per_point, 1))
    mean = float(hits.mean()) if len(hits) else 0.0
    x = np.array([float(np.median(strengths[g])) for g in groups])
    n = np.array([len(g) for g in groups], dtype=float)
    rates = (np.array([hits[g].sum() for g in groups]) + PRIOR_WEIGHT * mean) / (n + PRIOR_WEIGHT)
    fitted = IsotonicRegression(increasing=True, y_min=1e-6, y_max=1.0).fit_transform(
        x, rates, sample_weight=n
    )
    # A flat stretch needs only its two ends for the interpolation to read it.
    keep = np.ones(len(x), bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return [round(float(v), 6) for v in x[keep]], [round(float(p), 6) for p in fitted[keep]]


@dataclass(frozen=True)
class Fused:
    item_id: str
    score: float
    sources: dict[str, float]

    @property
    def source(self) -> str:
        """The source that argued most for the item."""
        return max(self.sources, key=self.sources.__getitem__)


def fuse(
    proposals: Mapping[str, Sequence[str]],
    calibration: Calibration,
    weights: Mapping[Any, float],
    strengths: Mapping[str, Mapping[str, float]] | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Every proposed item once (or the best `limit`), best first, scored by its best
    source's chance plus a tenth of the others'. A source in `strengths` is read by each
    item's strength."""
    by_item: dict[str, dict[str, float]] = {}
    for source, items in proposals.items():
        weight = weights.get(source, 0.0)
        if weight <= 0 or not items:
            continue
        strength = (strengths or {}).get(source)
        given = [strength.get(i, math.nan) for i in items] if strength else ()
        chances = np.minimum(1.0, weight * calibration.chances(source, len(items), given))
        for item_id, p in zip(items, chances.tolist(), strict=True):
            found = by_item.get(item_id)
            if found is None:
                by_item[item_id] = {source: p}
            else:
                found[source] = p
    scores = {item_id: _combined(by) for item_id, by in by_item.items()}
    if limit is None or limit >= len(scores):
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    else:
        # As sorted()[:limit] (stable too), without sorting what falls below the limit.
        ranked = heapq.nlargest(limit, scores, key=scores.__getitem__)
    return [Fused(item_id, scores[item_id], by_item[item_id]) for item_id in ranked]


def _combined(by_source: dict[str, float]) -> float:
    if len(by_source) == 1:
        return next(iter(by_source.values()))
    chances = by_source.values()
    best = max(chances)
    return min(1.0, best + AGREEMENT * (sum(chances) - best))
