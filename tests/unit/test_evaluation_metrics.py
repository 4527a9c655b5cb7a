"""Top-k metrics against values computed by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.evaluation import metrics
from services.evaluation.data import Interaction

T0 = datetime(2024, 1, 1, tzinfo=UTC)
IDCG_2 = 1 + 1 / math.log2(3)  # two relevant items at ranks 1 and 2


def train_rows() -> list[Interaction]:
    """Four train members: x touched by 2 of them, q by 1, y by all 4; r by none."""
    touched = {"u1": "xy", "u2": "xy", "u3": "qy", "u4": "y"}
    return [Interaction(member, item, T0) for member, items in touched.items() for item in items]


def test_accuracy_metrics_of_one_list() -> None:
    # Relevant x and y found at ranks 1 and 3.
    scores = metrics.score({"a": ["x", "q", "y", "r"]}, {"a": {"x", "y"}}, ks=[1, 3])
    assert scores["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / IDCG_2)
    assert scores["precision@3"] == pytest.approx(2 / 3)
    assert scores["recall@3"] == pytest.approx(1.0)
    assert scores["f1@3"] == pytest.approx(0.8)
    assert scores["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert scores["hit_rate@3"] == 1.0
    assert scores["ndcg@1"] == pytest.approx(1.0)
    assert scores["precision@1"] == pytest.approx(1.0)
    assert scores["recall@1"] == pytest.approx(0.5)
    assert scores["f1@1"] == pytest.approx(2 / 3)
    assert scores["map@1"] == pytest.approx(0.5)


def test_a_miss_at_the_top_lowers_ndcg() -> None:
    # Relevant at ranks 2 and 3 of 3: (1/log2 3 + 1/log2 4) / IDCG.
    scores = metrics.score({"a": ["q", "x", "y"]}, {"a": {"x", "y"}}, ks=[3])
    assert scores["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5) / IDCG_2)
    assert scores["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_members_without_a_list_count_as_zero() -> None:
    relevant = {"a": {"x"}, "b": {"z"}, "c": {"w"}}
    # a is perfect, b has an empty list, c is missing from the recommendations altogether.
    scores = metrics.score({"a": ["x"], "b": []}, relevant, ks=[5])
    assert scores["hit_rate@5"] == pytest.approx(1 / 3)
    assert scores["ndcg@5"] == pytest.approx(1 / 3)
    assert scores["recall@5"] == pytest.approx(1 / 3)
    assert scores["precision@5"] == pytest.approx(1 / 15)  # 1 hit / 5 slots, over 3 members
    assert metrics.per_member({"a": ["x"]}, relevant, k=5) == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_no_list_at_all_scores_zero_everywhere() -> None:
    scores = metrics.score({}, {"a": {"x"}}, ks=[10])
    assert all(value == 0.0 for value in scores.values())
    assert set(scores) == set(metrics.metric_names([10]))


def test_members_without_relevant_items_are_not_evaluated() -> None:
    scores = metrics.score({"a": ["x"], "b": ["q"]}, {"a": {"x"}, "b": set()}, ks=[1])
    assert scores["hit_rate@1"] == 1.0


def test_a_repeated_item_counts_once() -> None:
    scores = metrics.score({"a": ["x", "x", "q"]}, {"a": {"x", "y"}}, ks=[2])
    assert scores["precision@2"] == pytest.approx(0.5)  # x, q: one hit in two slots


def test_coverage_diversity_and_novelty() -> None:
    categories = {"x": "c1", "q": "c1", "y": "c2"}  # r has no category
    lists = {"a": ["x", "q", "y", "r"], "b": ["y"]}
    scores = metrics.score(
        lists, {"a": {"x"}, "b": {"y"}}, ks=[3, 4], train=train_rows(), categories=categories
    )
    # Items recommended in the top 3: x, q, y of a train catalog of 3 (x, q, y).
    assert scores["coverage@3"] == pytest.approx(3 / 3)
    assert metrics.score(lists, {"a": {"x"}}, ks=[2], catalog_size=10)["coverage@2"] == 0.2
    # a@3: 3 pairs, one (x, q) in the same category; b has a single item: not counted.
    assert scores["diversity@3"] == pytest.approx(2 / 3)
    # a@4: r is a category of its own, 6 pairs, one alike.
    assert scores["diversity@4"] == pytest.approx(5 / 6)
    # Self-information: x 2/4 -> 1 bit, q 1/4 -> 2, y 4/4 -> 0, r unseen -> the max, 2.
    assert scores["novelty@3"] == pytest.approx(((1 + 2 + 0) / 3 + 0) / 2)
    assert scores["novelty@4"] == pytest.approx(((1 + 2 + 0 + 2) / 4 + 0) / 2)


def test_per_member_ndcg() -> None:
    per = metrics.per_member({"a": ["q", "x"], "b": ["y"]}, {"a": {"x"}, "b": {"y"}}, k=2)
    assert per == pytest.approx({"a": 1 / math.log2(3), "b": 1.0})


def test_bad_k_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        metrics.score({}, {"a": {"x"}}, ks=[0, 5])
