"""Baseline models: exclusions honoured, k items, and each model's own behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.evaluation.baselines import (
    BASELINES,
    EASE,
    BuyAgain,
    ItemKNN,
    Popularity,
    Trending,
    build_matrix,
    top_k,
)
from services.evaluation.data import Interaction

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bought(member: str, item: str, day: float, basket: str = "") -> Interaction:
    return Interaction(member, item, T0 + timedelta(days=day), basket=basket or f"{member}{day}")


def grocery() -> list[Interaction]:
    """Bread and butter go together; jam is popular on its own; twelve items in all."""
    rows = []
    for n in range(8):
        rows += [bought(f"pair{n}", "bread", n), bought(f"pair{n}", "butter", n)]
    for n in range(10):
        rows.append(bought(f"jam{n}", "jam", n))
    for n in range(9):
        rows.append(bought(f"misc{n}", f"item{n}", n))
    rows.append(bought("target", "bread", 3))
    return rows


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_no_model_returns_an_excluded_item_and_lists_are_k_long(name: str) -> None:
    model = BASELINES[name]()
    assert model.name == name
    train = grocery()
    model.fit(train, {})
    members = ["pair0", "jam0", "target", "never-seen"]
    exclude = {"pair0": {"bread", "butter"}, "jam0": {"jam", "item1"}, "target": {"bread"}}
    found = model.recommend(members, 5, exclude)
    assert set(found) == set(members)
    for member, items in found.items():
        assert not set(items) & exclude.get(member, set())
        assert len(items) == len(set(items))
        if name != "buy_again":
            assert len(items) == 5
    assert isinstance(model.params(), dict)


def test_popularity_fills_lists_for_everyone_most_popular_first() -> None:
    model = Popularity()
    model.fit(grocery(), {})
    found = model.recommend(["never-seen"], 3, {})
    assert found["never-seen"] == ["jam", "bread", "butter"]  # 10, 9, 8 members


def test_buy_again_ranks_a_thrice_bought_item_first_and_does_not_pad() -> None:
    rows = [bought("m", "tea", day) for day in (0, 1, 2)]
    rows += [bought("m", "cake", 1), bought("other", "coffee", 2), bought("o2", "coffee", 2)]
    model = BuyAgain()
    model.fit(rows, {})
    found = model.recommend(["m", "o3"], 5, {})
    assert found["m"] == ["tea", "cake"]
    assert found["o3"] == []  # nothing of their own, nothing else
    assert model.recommend(["m"], 5, {"m": {"tea"}}) == {"m": ["cake"]}


def test_buy_again_decays_old_purchases() -> None:
    rows = [bought("m", "old", day) for day in (0, 1)] + [bought("m", "new", 300)]
    model = BuyAgain(half_life_days=30)
    model.fit(rows, {})
    assert model.recommend(["m"], 2, {})["m"] == ["new", "old"]


@pytest.mark.parametrize("similarity", ["cosine", "cooccurrence"])
def test_item_knn_recommends_the_co_bought_item(similarity: str) -> None:
    model = ItemKNN(similarity=similarity)
    model.fit(grocery(), {})
    found = model.recommend(["target"], 3, {"target": {"bread"}})
    assert found["target"][0] == "butter"


def test_item_knn_keeps_only_the_top_neighbours() -> None:
    rows = [*grocery(), bought("pair0", "jam", 0)]
    model = ItemKNN(neighbours=1)
    model.fit(rows, {})
    neighbours_per_item = np.diff(model.similar.indptr)
    assert neighbours_per_item.max() == 1


def test_trending_prefers_what_is_bought_lately() -> None:
    rows = [bought(f"old{n}", "classic", 0) for n in range(5)]
    rows += [bought(f"new{n}", "hit", 30) for n in range(2)]
    rows += [bought("x", "filler", 1)]
    model = Trending(window_days=14)
    model.fit(rows, {})
    # The hit first; then, with no recent interest, overall popularity.
    assert model.recommend(["anyone"], 3, {})["anyone"] == ["hit", "classic", "filler"]


def test_ease_recommends_the_co_bought_item() -> None:
    model = EASE(l2=1.0)
    model.fit(grocery(), {})
    assert model.skipped is None
    assert model.recommend(["target"], 1, {"target": {"bread"}}) == {"target": ["butter"]}


def test_ease_is_skipped_above_max_items_with_a_reason() -> None:
    model = EASE(max_items=5)
    model.fit(grocery(), {})
    assert model.skipped is not None
    assert "12 items > max_items 5" in model.skipped and "GiB" in model.skipped
    with pytest.raises(RuntimeError, match="skipped"):
        model.recommend(["target"], 3, {})


def test_matrix_orders_items_by_popularity() -> None:
    matrix = build_matrix(grocery())
    assert matrix.items[:3] == ["jam", "bread", "butter"]
    assert list(matrix.popularity[:3]) == [10, 9, 8]
    assert matrix.binary.shape == (len(matrix.members), 12)


def test_top_k_breaks_ties_by_lower_column_and_skips_banned() -> None:
    scores = np.array([[0.0, 2.0, 2.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0, 3.0]])
    banned = np.zeros_like(scores, dtype=bool)
    banned[0, 1] = True
    picked = top_k(scores, 3, banned)
    assert [list(p) for p in picked] == [[2, 3, 0], [4, 0, 1]]
    unpadded = top_k(scores, 3, banned, pad=False)
    assert [list(p) for p in unpadded] == [[2, 3], [4, 0]]
