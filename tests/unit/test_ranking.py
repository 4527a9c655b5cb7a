"""The blend ranker: relevance, popularity and the member's category affinity, combined."""

from __future__ import annotations

import pytest

from services.common.candidates import Candidate
from services.ranking.rankers import BlendRanker, MemberContext
from services.ranking.settings import BlendWeights


@pytest.fixture
def ranker() -> BlendRanker:
    return BlendRanker(BlendWeights())


def test_affinity_lifts_the_favourite_category(ranker: BlendRanker) -> None:
    # Equal in everything but category; the alphabetical tie-break would favour "a-lamp".
    candidates = [
        Candidate("a-lamp", 0.8, popularity=0.3, category="lighting", source="als"),
        Candidate("b-rake", 0.8, popularity=0.3, category="garden", source="als"),
    ]
    gardener = MemberContext("m-1", category_weights={"garden": 9.0, "lighting": 1.0})

    ranked = ranker.rank(gardener, candidates, "home", 10)

    assert [r.item_id for r in ranked] == ["b-rake", "a-lamp"]
    assert ranked[0].score > ranked[1].score


def test_without_affinity_the_order_is_the_tie_break(ranker: BlendRanker) -> None:
    candidates = [
        Candidate("b-rake", 0.8, popularity=0.3, category="garden"),
        Candidate("a-lamp", 0.8, popularity=0.3, category="lighting"),
    ]

    ranked = ranker.rank(MemberContext("m-new"), candidates, "home", 10)

    assert [r.item_id for r in ranked] == ["a-lamp", "b-rake"]
    assert ranked[0].score == ranked[1].score


def test_relevance_dominates_when_affinity_is_equal(ranker: BlendRanker) -> None:
    candidates = [
        Candidate("popular-meh", 0.1, popularity=1.0, category="garden", source="als"),
        Candidate("relevant", 2.0, popularity=0.0, category="garden", source="als"),
        Candidate("middle", 1.0, popularity=0.5, category="garden", source="als"),
    ]
    member = MemberContext("m-1", category_weights={"garden": 4.0})

    ranked = ranker.rank(member, candidates, "home", 10)

    assert [r.item_id for r in ranked] == ["relevant", "middle", "popular-meh"]


def test_affinity_can_outweigh_a_small_relevance_gap(ranker: BlendRanker) -> None:
    candidates = [
        Candidate("off-taste", 1.0, category="lighting", source="als"),
        Candidate("on-taste", 0.9, category="garden", source="als"),
        Candidate("floor", 0.0, category="lighting", source="als"),
    ]
    member = MemberContext("m-1", category_weights={"garden": 1.0})

    ranked = ranker.rank(member, candidates, "home", 10)

    assert [r.item_id for r in ranked][:2] == ["on-taste", "off-taste"]


def test_limit_is_respected_and_keeps_the_best(ranker: BlendRanker) -> None:
    candidates = [Candidate(f"i{n}", float(n), category="c") for n in range(20)]

    ranked = ranker.rank(MemberContext("m-1"), candidates, "home", 5)

    assert [r.item_id for r in ranked] == ["i19", "i18", "i17", "i16", "i15"]


def test_no_candidates_gives_an_empty_list(ranker: BlendRanker) -> None:
    assert ranker.rank(MemberContext("m-1"), [], "home", 10) == []


def test_reasons_mention_the_liked_category(ranker: BlendRanker) -> None:
    candidates = [
        Candidate("rake", 1.0, popularity=0.1, category="garden", source="als"),
        Candidate("lamp", 0.5, popularity=0.1, category="lighting", source="als"),
    ]
    member = MemberContext("m-1", category_weights={"garden": 10.0})

    reasons = {r.item_id: r.reasons for r in ranker.rank(member, candidates, "home", 10)}

    assert any("garden" in reason for reason in reasons["rake"])
    assert not any("lighting" in reason for reason in reasons["lamp"])
    assert all(reasons.values())  # every item says something


def test_ranked_items_carry_their_category(ranker: BlendRanker) -> None:
    ranked = ranker.rank(MemberContext("m"), [Candidate("x", 1.0, category="toys")], "home", 1)

    assert ranked[0].category == "toys"
