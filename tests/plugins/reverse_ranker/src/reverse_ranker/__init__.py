"""A ranker plug-in as a shop's data scientist would write one: a Ranker and a build function
named by the `recofleet.rankers` entry point (recofleet must be importable beside it)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.candidates import CandidateLike
from services.ranking.rankers import MemberContext, RankedItem, Ranker
from services.ranking.registry import RankerInputs


class ReverseRanker(Ranker):
    """Retrieval's least relevant candidates first: easy to recognise in an answer."""

    name = "reverse"

    def rank(
        self, member: MemberContext, candidates: Sequence[CandidateLike], placement: str, limit: int
    ) -> list[RankedItem]:
        ordered = sorted(candidates, key=lambda c: (c.score, c.item_id))
        return [
            RankedItem(c.item_id, float(-c.score), ["reversed"], c.category)
            for c in ordered[:limit]
        ]


def build(inputs: RankerInputs) -> Ranker:
    return ReverseRanker()
