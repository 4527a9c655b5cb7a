"""Rankers: one interface every ranking model implements, and the first of them.

A ranker sees the member (from their profile) and the candidates (from retrieval) and
returns them in the order to show, each with the reasons a shop can display.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.common.candidates import SOURCE_REASONS, CandidateLike
from services.ranking.settings import BlendWeights


@dataclass(frozen=True)
class MemberContext:
    member_id: str
    category_weights: Mapping[str, float] = field(default_factory=dict)
    orders: int = 0
    # RFM scores 1-5, 0 when unknown.
    r_score: int = 0
    f_score: int = 0
    m_score: int = 0
    price_band: str = ""
    price_percentile: float | None = None
    # Category -> share of the member's time-decayed weight (the portrait's affinities).
    affinities: Mapping[str, float] = field(default_factory=dict)
    lifecycle: str = ""
    # The member's latest items, newest first.
    recent_items: Sequence[str] = ()

    def affinity(self, category: str, total: float | None = None) -> float:
        """Share of the member's weighted interactions that went to `category`, in [0, 1]
        (`total`: their weights' sum, when the caller has it already)."""
        if total is None:
            total = sum(self.category_weights.values())
        if not category or total <= 0:
            return 0.0
        return self.category_weights.get(category, 0.0) / total


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    reasons: list[str]
    category: str = ""


class Ranker(abc.ABC):
    name: str

    @abc.abstractmethod
    def rank(
        self, member: MemberContext, candidates: Sequence[CandidateLike], placement: str, limit: int
    ) -> list[RankedItem]:
        """The best `limit` candidates for the member, best first."""


class BlendRanker(Ranker):
    """A weighted blend of retrieval relevance, popularity and the member's category affinity.

    Relevance is min-max scaled within the request because ALS inner products have no
    fixed range; popularity and affinity are already in [0, 1].
    """

    name = "blend"

    def __init__(self, weights: BlendWeights) -> None:
        self._w = weights

    def rank(
        self, member: MemberContext, candidates: Sequence[CandidateLike], placement: str, limit: int
    ) -> list[RankedItem]:
        relevance = _scaled([c.score for c in candidates])
        total = sum(member.category_weights.values())
        ranked = []
        for candidate, rel in zip(candidates, relevance, strict=True):
            affinity = member.affinity(candidate.category, total)
            score = (
                self._w.relevance * rel
                + self._w.popularity * candidate.popularity
                + self._w.affinity * affinity
            )
            reasons = _reasons(candidate, rel, affinity)
            ranked.append(
                RankedItem(candidate.item_id, round(score, 6), reasons, candidate.category)
            )
        ranked.sort(key=lambda item: (-item.score, item.item_id))
        return ranked[:limit]


def _scaled(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return [1.0 if high > 0 else 0.0 for _ in values]
    return [(v - low) / (high - low) for v in values]


# The sources whose reason is shown as it stands; this ranker words the other two itself
# (ALS by the candidate's relevance, popular by its popularity).
STATED_SOURCES = SOURCE_REASONS.keys() - {"als", "popular"}


def _reasons(candidate: CandidateLike, relevance: float, affinity: float) -> list[str]:
    reasons = []
    if candidate.source == "als" and relevance >= 0.5:
        reasons.append("bought by members with similar taste")
    if candidate.source in STATED_SOURCES:
        reasons.append(SOURCE_REASONS[candidate.source])
    if affinity >= 0.2:
        reasons.append(f"you like {candidate.category}")
    if candidate.popularity >= 0.5 or candidate.source == "popular":
        reasons.append("popular in the shop")
    return reasons or ["picked for you"]
