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
        return max(self.sources, key=lambda s: self.sources[s])


def fuse(
    proposals: Mapping[str, Sequence[str]],
    calibration: Calibration,
    weights: Mapping[Any, float],
    strengths: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Fused]:
    """Every proposed item once, best first, scored by its best source's chance plus a
    tenth of the others'. A source in `strengths` is read by each item's strength."""
    sources: dict[str, dict[str, float]] = {}
    for source, items in proposals.items():
        weight = weights.get(source, 0.0)
        if weight <= 0:
            continue
        strength = (strengths or {}).get(source, {})
        for rank, item_id in enumerate(items, start=1):
            p = min(1.0, weight * calibration.probability(source, rank, strength.get(item_id)))
            sources.setdefault(item_id, {})[source] = p
    fused = [Fused(item_id, _combined(list(by.values())), by) for item_id, by in sources.items()]
    fused.sort(key=lambda f: -f.score)
    return fused


def _combined(chances: list[float]) -> float:
    best = max(chances)
    return min(1.0, best + AGREEMENT * (sum(chances) - best))
