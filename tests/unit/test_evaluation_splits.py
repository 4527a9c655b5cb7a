"""Train/test splits: disjoint, no look into the future, validation never touching test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.evaluation import splits
from services.evaluation.data import Dataset, Interaction

START = datetime(2024, 1, 1, tzinfo=UTC)


def at(day: float) -> datetime:
    return START + timedelta(days=day)


def shop() -> Dataset:
    """Five members over 40 days, in baskets; m5 bought once."""
    rows = []
    for member, days in {
        "m1": [0, 10, 20, 30, 38],
        "m2": [2, 15, 35],
        "m3": [5, 36],
        "m4": [1, 3, 12, 25],
        "m5": [7],
    }.items():
        for number, day in enumerate(days):
            for item in (f"i{(number + len(member)) % 6}", f"i{number % 4 + 6}"):
                rows.append(Interaction(member, item, at(day), basket=f"{member}-{number}"))
    rows.append(Interaction("m2", "i9", at(34), type="view"))
    return Dataset("shop", "test", sorted(rows, key=lambda i: i.at))


def ids(rows: list[Interaction]) -> Counter[Interaction]:
    return Counter(rows)


def assert_partition(split: splits.Split, data: Dataset) -> None:
    assert not set(split.train) & set(split.test)
    assert ids(split.train) + ids(split.test) == ids(data.interactions)


def test_temporal_puts_everything_before_the_cutoff_in_train() -> None:
    data = shop()
    split = splits.temporal(data, cutoff=at(30))
    assert_partition(split, data)
    assert max(i.at for i in split.train) < at(30) <= min(i.at for i in split.test)
    assert split.params["cutoff"] == at(30).isoformat()
    assert split.params["window_days"] == 8.0  # to the newest interaction, day 38


def test_temporal_last_days_and_naive_cutoff() -> None:
    data = shop()
    by_days = splits.temporal(data, last_days=8)
    naive = splits.temporal(data, cutoff=datetime(2024, 1, 31))
    assert by_days.train == naive.train and by_days.test == naive.test


@pytest.mark.parametrize("options", [{}, {"cutoff": at(30), "last_days": 3.0}])
def test_temporal_needs_exactly_one_of_cutoff_and_last_days(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        splits.temporal(shop(), **options)  # type: ignore[arg-type]


def test_temporal_without_test_data_is_refused() -> None:
    with pytest.raises(splits.SplitError, match="nothing left to test"):
        splits.temporal(shop(), cutoff=at(100))


def test_last_basket_holds_out_each_members_latest_basket() -> None:
    data = shop()
    split = splits.last_basket(data)
    assert_partition(split, data)
    test_baskets = {(i.member_id, i.basket or "view") for i in split.test}
    assert test_baskets == {("m1", "m1-4"), ("m2", "m2-2"), ("m3", "m3-1"), ("m4", "m4-3")}
    # m2's view has no basket id: a "basket" of its own, older than m2's last basket.
    assert any(i.type == "view" for i in split.train)
    assert all(i.member_id != "m5" for i in split.test)  # a single basket only trains
    for member in ("m1", "m2", "m3", "m4"):
        newest_train = max(i.at for i in split.train if i.member_id == member and i.basket)
        assert newest_train < min(i.at for i in split.test if i.member_id == member)


def test_last_basket_uses_timestamps_without_basket_ids() -> None:
    rows = [Interaction("m", item, at(day)) for item, day in (("a", 0), ("b", 1), ("c", 1))]
    split = splits.last_basket(rows)
    assert {i.item_id for i in split.test} == {"b", "c"}
    assert [i.item_id for i in split.train] == ["a"]


def test_random_per_member_is_reproducible_and_keeps_train_for_everyone() -> None:
    data = shop()
    split = splits.random_per_member(data, test_fraction=0.25, seed=7)
    assert_partition(split, data)
    again = splits.random_per_member(data, test_fraction=0.25, seed=7)
    assert split.test == again.test
    assert split.test != splits.random_per_member(data, test_fraction=0.25, seed=8).test
    per_member = Counter(i.member_id for i in data.interactions)
    tested = Counter(i.member_id for i in split.test)
    for member, count in per_member.items():
        assert tested[member] == min(count - 1, max(1, round(0.25 * count)))
    assert {i.member_id for i in split.train} == set(per_member)


def test_random_keeps_single_interaction_members_in_train() -> None:
    rows = [Interaction("solo", "a", at(0))]
    rows += [Interaction("m", "a", at(0)), Interaction("m", "b", at(1))]
    split = splits.random_per_member(rows, 0.5, seed=1)
    assert [i.member_id for i in split.test] == ["m"]


@pytest.mark.parametrize(
    "make",
    [
        lambda d: splits.temporal(d, cutoff=at(30)),
        splits.last_basket,
        lambda d: splits.random_per_member(d, 0.3, seed=3),
    ],
)
def test_validation_is_carved_from_train_and_never_touches_test(
    make: Callable[[Dataset], splits.Split],
) -> None:
    data = shop()
    outer = make(data)
    inner = splits.validation(outer)
    assert inner.name == f"validation_{outer.name}"
    assert not set(inner.test) & set(outer.test)
    assert not set(inner.train) & set(outer.test)
    assert ids(inner.train) + ids(inner.test) == ids(outer.train)


def test_temporal_validation_window_has_the_test_windows_length() -> None:
    outer = splits.temporal(shop(), cutoff=at(30))  # test window: 8 days
    inner = splits.validation(outer)
    assert inner.params["cutoff"] == at(22).isoformat()
    assert all(at(22) <= i.at < at(30) for i in inner.test)
    assert all(i.at < at(22) for i in inner.train)


def test_validation_of_plain_interactions_needs_a_kind() -> None:
    rows = shop().interactions
    with pytest.raises(ValueError, match="kind"):
        splits.validation(rows)
    assert splits.validation(rows, "last-basket").name == "validation_last_basket"


def test_test_members_need_a_relevant_test_item_and_train_history() -> None:
    rows = [
        Interaction("old", "a", at(0)),
        Interaction("old", "b", at(10)),
        Interaction("new", "a", at(10)),  # cold: nothing in train
        Interaction("looker", "a", at(0)),
        Interaction("looker", "c", at(10), type="view"),  # no purchase in test
    ]
    split = splits.temporal(rows, cutoff=at(5))
    assert splits.test_members(split) == ["old"]
    assert splits.test_members(split, include_cold=True) == ["new", "old"]
    assert splits.test_members(split, types=("purchase", "view")) == ["looker", "old"]
    assert splits.relevant(split) == {"old": {"b"}}
    assert splits.relevant(split, include_cold=True) == {"new": {"a"}, "old": {"b"}}
    assert split.describe()["test_members"] == 1
