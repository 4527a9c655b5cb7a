"""Campaigns: merchandising rules over recommendation lists, offers, and the stock they use."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import Engine

from services.campaigns.rules import Removal, apply_rules
from services.campaigns.store import SqlCatalogStore
from services.common.candidates import Candidate
from services.common.events import CatalogItem


def _candidates(*item_ids: str) -> list[Candidate]:
    return [Candidate(item_id, score=1.0 - n / 100) for n, item_id in enumerate(item_ids)]


class SoldOut:
    """A catalog's stock lookup where `item_ids` are sold out; remembers what it was asked."""

    def __init__(self, *item_ids: str) -> None:
        self.sold_out = set(item_ids)
        self.asked: list[list[str]] = []

    def __call__(self, ids: Sequence[str]) -> set[str]:
        self.asked.append(list(ids))
        return self.sold_out & set(ids)


def test_apply_rules_removes_what_must_not_be_shown_and_keeps_order() -> None:
    candidates = _candidates("a", "bought", "b", "asked-away", "gone", "a", "c", "unknown")

    result = apply_rules(
        candidates,
        purchased=["bought", "never-proposed"],
        excluded=["asked-away"],
        out_of_stock=SoldOut("gone"),
    )

    assert [c.item_id for c in result.kept] == ["a", "b", "c", "unknown"]
    assert result.kept == [candidates[0], candidates[2], candidates[6], candidates[7]]
    assert result.removed == [
        Removal("bought", "purchased"),
        Removal("asked-away", "excluded"),
        Removal("gone", "out_of_stock"),
        Removal("a", "duplicate"),
    ]


def test_the_first_of_duplicates_is_kept() -> None:
    first, second = Candidate("x", 0.2), Candidate("x", 0.9)

    result = apply_rules([first, second], purchased=[], excluded=[], out_of_stock=SoldOut())

    assert result.kept == [first]
    assert result.removed == [Removal("x", "duplicate")]


def test_items_the_catalog_does_not_know_are_kept() -> None:
    out_of_stock = SoldOut("elsewhere")
    candidates = _candidates("new-1", "new-2")

    result = apply_rules(candidates, purchased=[], excluded=[], out_of_stock=out_of_stock)

    assert result.kept == candidates
    assert result.removed == []
    assert out_of_stock.asked == [["new-1", "new-2"]]


def test_nothing_in_nothing_out() -> None:
    result = apply_rules([], purchased=["a"], excluded=["b"], out_of_stock=SoldOut("c"))

    assert (result.kept, result.removed) == ([], [])


@pytest.fixture
def catalog(engine: Engine) -> SqlCatalogStore:
    """The catalog store on SQLite and on PostgreSQL (the `engine` fixture): a conformance
    suite; the engine fixture disposes of the connections."""
    return SqlCatalogStore(engine)


def test_out_of_stock_reports_only_sold_out_known_items(catalog: SqlCatalogStore) -> None:
    catalog.save(
        [
            CatalogItem(item_id="in", in_stock=True),
            CatalogItem(item_id="out", in_stock=False),
            CatalogItem(item_id="default"),
        ]
    )

    assert catalog.out_of_stock(["in", "out", "default", "unknown"]) == {"out"}
    assert catalog.out_of_stock([]) == set()


def test_a_later_save_of_an_item_wins(catalog: SqlCatalogStore) -> None:
    catalog.save([CatalogItem(item_id="a", in_stock=False), CatalogItem(item_id="b")])

    catalog.save(
        [CatalogItem(item_id="a", in_stock=True), CatalogItem(item_id="b", in_stock=False)]
    )

    assert catalog.out_of_stock(["a", "b"]) == {"b"}


def test_within_one_save_the_last_record_wins(catalog: SqlCatalogStore) -> None:
    catalog.save(
        [
            CatalogItem(item_id="a", in_stock=True),
            CatalogItem(item_id="a", in_stock=False),
            CatalogItem(item_id="b", in_stock=False),
            CatalogItem(item_id="b", in_stock=True),
        ]
    )

    assert catalog.out_of_stock(["a", "b"]) == {"a"}


def test_stock_survives_a_restart(engine: Engine) -> None:
    SqlCatalogStore(engine).save([CatalogItem(item_id="gone", in_stock=False)])

    assert SqlCatalogStore(engine).out_of_stock(["gone"]) == {"gone"}


def test_the_store_feeds_the_rules(catalog: SqlCatalogStore) -> None:
    catalog.save([CatalogItem(item_id="gone", in_stock=False)])

    result = apply_rules(
        _candidates("gone", "here"), purchased=[], excluded=[], out_of_stock=catalog.out_of_stock
    )

    assert [c.item_id for c in result.kept] == ["here"]
    assert result.removed == [Removal("gone", "out_of_stock")]


def test_a_replica_sees_what_another_saved_once_it_refreshes(engine: Engine) -> None:
    one, other = SqlCatalogStore(engine), SqlCatalogStore(engine)
    one.save([CatalogItem(item_id="gone", in_stock=False)])
    assert other.out_of_stock(["gone"]) == set()  # in memory: not read per request

    other.refresh()

    assert other.out_of_stock(["gone"]) == {"gone"}
    one.save([CatalogItem(item_id="gone", in_stock=True)])
    other.refresh()
    assert other.out_of_stock(["gone"]) == set()
