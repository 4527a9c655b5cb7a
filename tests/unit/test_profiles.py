"""Member profiles: what events make of a member, kept exactly once per event id.

The store tests are a conformance suite: every one runs on SQLite (the embedded default)
and on PostgreSQL (production), through the `engine` fixture of tests/unit/conftest.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from services.common.events import CatalogItem, Event
from services.common.migrations import OutdatedSchema
from services.profiles.domain import CategoryStat, ManualTag, MemberProfile, Rfm
from services.profiles.settings import ProfilesSettings
from services.profiles.store import (
    SqlProfileStore,
    TooManyTags,
    member_categories,
)

NOW = datetime.now(UTC).replace(microsecond=0)

StoreFactory = Callable[..., SqlProfileStore]


@pytest.fixture
def make_store(engine: Engine) -> StoreFactory:
    """Stores over the one database (closed with the engine); a second one is a restart."""

    def make(**settings: Any) -> SqlProfileStore:
        return SqlProfileStore(engine, ProfilesSettings(**settings))

    return make


@pytest.fixture
def store(make_store: StoreFactory) -> SqlProfileStore:
    return make_store()


def ev(type_: str, member: str = "m-1", *, at: datetime | None = None, **fields: Any) -> Event:
    return Event.model_validate(
        {"type": type_, "member_id": member, "timestamp": at or NOW, **fields}
    )


def _get(store: SqlProfileStore, member: str = "m-1") -> MemberProfile:
    profile = store.get(member)
    assert profile is not None, f"no profile for {member}"
    return profile


def _line(item_id: str, category: str, **fields: Any) -> dict[str, Any]:
    return {"item_id": item_id, "category": category, **fields}


def _shopping_trip() -> list[Event]:
    """Two views, a cart and an order of 2 lamps at 20 and a bulb at 2.50, an hour ago."""
    hours_ago = [NOW - timedelta(hours=h) for h in (3, 2, 1.9, 1)]
    lamp = _line("lamp", "lighting", price=20.0)
    return [
        ev("view", at=hours_ago[0], items=[_line("lamp", "lighting")]),
        ev("view", at=hours_ago[1], items=[_line("rake", "garden")]),
        ev("add_to_cart", at=hours_ago[2], items=[lamp]),
        ev(
            "purchase",
            at=hours_ago[3],
            order_id="o-1",
            items=[lamp | {"quantity": 2}, _line("bulb", "lighting", price=2.5)],
        ),
    ]


def test_views_cart_and_purchase_make_rfm(store: SqlProfileStore) -> None:
    assert store.apply_events(_shopping_trip()) == 4

    profile = _get(store)
    rfm = profile.rfm(NOW)
    assert rfm.frequency == 1
    assert rfm.monetary == 42.5
    assert rfm.recency_days is not None
    assert rfm.recency_days == pytest.approx(1 / 24, abs=0.005)  # one hour before NOW
    assert profile.events == 4
    assert profile.first_seen == NOW - timedelta(hours=3)
    assert profile.last_seen == NOW - timedelta(hours=1)
    assert profile.last_order_at == NOW - timedelta(hours=1)


def test_recent_items_newest_first(store: SqlProfileStore) -> None:
    store.apply_events(_shopping_trip())

    recent = [(r.item_id, r.event_type) for r in _get(store).recent]

    # The two lines of the order share its instant: either may come first.
    assert set(recent[:2]) == {("lamp", "purchase"), ("bulb", "purchase")}
    assert recent[2:] == [("lamp", "add_to_cart"), ("rake", "view"), ("lamp", "view")]


def test_recent_items_are_capped(make_store: StoreFactory) -> None:
    store = make_store(recent_items=3)
    views = [ev("view", item_id=f"i{n}", at=NOW - timedelta(minutes=10 - n)) for n in range(5)]

    store.apply_events(views[:2])
    store.apply_events(views[2:])

    assert [r.item_id for r in _get(store).recent] == ["i4", "i3", "i2"]


def test_recent_items_order_by_instant_not_by_wall_clock(store: SqlProfileStore) -> None:
    paris = timezone(timedelta(hours=2))
    # 10:00 in Paris is 08:00 UTC: the 09:00 UTC view came after it.
    store.apply_events(
        [
            ev("view", item_id="early", at=datetime(2026, 5, 1, 10, 0, tzinfo=paris)),
            ev("view", item_id="late", at=datetime(2026, 5, 1, 9, 0, tzinfo=UTC)),
        ]
    )

    profile = _get(store)

    assert [r.item_id for r in profile.recent] == ["late", "early"]
    assert profile.first_seen == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def test_category_weights_from_event_lines(store: SqlProfileStore) -> None:
    store.apply_events(_shopping_trip())

    # view 1, add_to_cart 3, purchase 5 per line (two lighting lines in the order)
    assert _get(store).category_weights() == {"lighting": 1 + 3 + 5 + 5, "garden": 1}


def test_category_from_the_catalog_when_lines_lack_one(store: SqlProfileStore) -> None:
    store.save_catalog(
        [
            CatalogItem(item_id="pan", category="kitchen"),
            CatalogItem(item_id="hose", category="kitchen"),  # the event says otherwise
        ]
    )

    store.apply_events(
        [
            ev("view", item_id="pan"),
            ev("wishlist", item_id="pan"),
            ev("view", items=[{"item_id": "hose", "category": "garden"}]),
            ev("view", item_id="mystery"),  # neither the event nor the catalog knows
        ]
    )

    assert _get(store).category_weights() == {"kitchen": 3.0, "garden": 1.0}


def test_purchased_item_ids(store: SqlProfileStore) -> None:
    store.apply_events(_shopping_trip())
    store.apply_events([ev("purchase", item_id="apron", order_id="o-2", revenue=5)])

    assert _get(store).purchased == ["apron", "bulb", "lamp"]


def test_applying_the_same_events_again_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    events = _shopping_trip()
    store.apply_events(events)
    before = _get(store)

    assert store.apply_events(events) == 0
    assert store.apply_events(list(reversed(events))) == 0
    assert _get(store) == before
    # ... also after a restart: which events were applied is stored, not remembered.
    restarted = make_store()
    assert restarted.apply_events(events[1:3]) == 0
    assert _get(restarted) == before


def test_a_batch_repeating_an_event_applies_it_once(store: SqlProfileStore) -> None:
    purchase = ev("purchase", item_id="lamp", order_id="o-1", revenue=30)

    assert store.apply_events([purchase, purchase, purchase]) == 1

    profile = _get(store)
    assert profile.rfm(NOW) == Rfm(recency_days=0.0, frequency=1, monetary=30.0)
    assert profile.events == 1
    assert [r.item_id for r in profile.recent] == ["lamp"]


def test_purchase_events_sharing_an_order_count_as_one_order(store: SqlProfileStore) -> None:
    # Some shops send one purchase event per order line.
    store.apply_events([ev("purchase", item_id="a", order_id="o-7", revenue=10)])
    store.apply_events(
        [
            ev("purchase", item_id="b", order_id="o-7", revenue=5),
            ev("purchase", item_id="c", order_id="o-8", revenue=1),
        ]
    )

    rfm = _get(store).rfm(NOW)

    assert rfm.frequency == 2
    assert rfm.monetary == 16.0


def test_purchases_without_order_id_are_separate_orders(store: SqlProfileStore) -> None:
    store.apply_events([ev("purchase", item_id="a", revenue=1), ev("purchase", item_id="a")])

    assert _get(store).orders == 2


def test_the_same_order_id_of_two_members_counts_for_each(store: SqlProfileStore) -> None:
    store.apply_events(
        [
            ev("purchase", "m-1", item_id="a", order_id="1", revenue=3),
            ev("purchase", "m-2", item_id="a", order_id="1", revenue=4),
        ]
    )

    assert (_get(store, "m-1").orders, _get(store, "m-2").orders) == (1, 1)


def test_refund_lowers_monetary(store: SqlProfileStore) -> None:
    store.apply_events(_shopping_trip())
    before = _get(store)

    store.apply_events([ev("refund", item_id="bulb", order_id="o-1", revenue=2.5)])

    profile = _get(store)
    assert profile.rfm(NOW).monetary == 40.0
    assert profile.orders == 1
    # A refund is no sign of taste: no recent item, no category weight.
    assert profile.recent == before.recent
    assert profile.category_weights() == before.category_weights()


def test_members_are_kept_apart(store: SqlProfileStore) -> None:
    store.apply_events(
        [
            ev("purchase", "m-1", item_id="a", revenue=10),
            ev("view", "m-2", items=[{"item_id": "b", "category": "toys"}]),
        ]
    )

    other = _get(store, "m-2")
    assert other.orders == 0
    assert other.rfm(NOW).recency_days is None
    assert other.purchased == []
    assert other.category_weights() == {"toys": 1.0}
    assert _get(store, "m-1").purchased == ["a"]


def test_an_unknown_member_has_no_profile(store: SqlProfileStore) -> None:
    store.apply_events([ev("view", "m-1", item_id="a")])

    assert store.get("m-404") is None


# --- portraits: what the store keeps for them, scoring, manual tags ----------------------


def test_portrait_figures_survive_the_store(store: SqlProfileStore) -> None:
    first, second = NOW - timedelta(days=40), NOW - timedelta(days=2)
    store.apply_events(
        [
            ev(
                "purchase",
                at=first,
                order_id="o-1",
                items=[_line("lamp", "lighting", price=20.0, quantity=2)],
                context={"channel": "web", "coupon": "WELCOME10"},
            ),
            ev("view", at=second, items=[_line("rake", "garden")], context={"channel": "app"}),
            ev(
                "purchase",
                at=second,
                order_id="o-2",
                items=[_line("bulb", "lighting", price=2.5)],
                context={"channel": "app"},
            ),
        ]
    )

    profile = _get(store)

    assert (profile.first_order_at, profile.last_order_at) == (first, second)
    assert profile.discounted_orders == 1
    assert profile.channels == {"web": 1, "app": 2}
    lighting = profile.categories["lighting"]
    assert (lighting.paid_units, lighting.paid_amount) == (3, 42.5)
    assert lighting.last_purchase_at == second
    assert lighting.affinity_at == second
    # 5 for the first order, halved... 38 days of a 90-day half-life, then 5 more
    assert lighting.affinity == pytest.approx(5 * 0.5 ** (38 / 90) + 5)
    assert profile.categories["garden"].last_purchase_at is None


def _members_with_orders(store: SqlProfileStore, orders: dict[str, list[float]]) -> None:
    """Members who placed orders of these values, the last one `days` ago."""
    events = []
    for member, values in orders.items():
        for n, value in enumerate(values):
            events.append(
                ev(
                    "purchase",
                    member,
                    at=NOW - timedelta(days=len(values) - n),
                    order_id=f"{member}-{n}",
                    item_id="a",
                    revenue=value,
                )
            )
    store.apply_events(events)


def test_scores_are_quintiles_of_the_members_who_ordered_in_the_window(
    make_store: StoreFactory,
) -> None:
    store = make_store(scoring_window_days=30)
    # m-1 .. m-10 placed 1 .. 10 orders of 10 each; the last one 1 day ago.
    _members_with_orders(store, {f"m-{n}": [10.0] * n for n in range(1, 11)})
    store.apply_events(
        [
            # outside the window: not in the population, still scored against it
            ev("purchase", "old", at=NOW - timedelta(days=400), item_id="a", revenue=10_000),
            ev("view", "browser", item_id="a"),
        ]
    )

    scoring = store.recompute_scoring(NOW)

    assert scoring.population == 10
    assert scoring.frequency == (2, 4, 6, 8)
    assert scoring.monetary == (20, 40, 60, 80)
    assert scoring.recency == (1, 1, 1, 1)
    assert store.scoring() == scoring
    # Another store object (a replica, a restart) reads the same boundaries.
    assert make_store().scoring() == scoring


def test_price_distributions_come_from_the_catalog(store: SqlProfileStore) -> None:
    store.save_catalog(
        [CatalogItem(item_id=f"pan-{n}", category="kitchen", price=float(n)) for n in range(1, 11)]
        + [CatalogItem(item_id="hose", category="garden", price=3.0)]
    )
    store.apply_events(
        [
            ev(
                "purchase",
                f"m-{n}",
                item_id="a",
                revenue=1,
                items=[_line("rake", "garden", price=p)],
            )
            for n, p in enumerate([2.0, 4.0, 6.0, 8.0, 10.0])
        ]
    )

    scoring = store.recompute_scoring(NOW)

    assert scoring.price_sources == {"kitchen": "catalog", "garden": "paid"}
    assert (scoring.prices["kitchen"][0], scoring.prices["kitchen"][-1]) == (1.0, 10.0)
    assert (scoring.prices["garden"][0], scoring.prices["garden"][-1]) == (2.0, 10.0)


def test_no_scoring_before_the_first_computation(store: SqlProfileStore) -> None:
    assert store.scoring() is None
    assert store.recompute_scoring(NOW).population == 0


def test_new_orders_are_counted_for_the_schedule(store: SqlProfileStore) -> None:
    store.apply_events(_shopping_trip())
    store.apply_events([ev("purchase", item_id="a", order_id="o-1", revenue=1)])  # same order

    assert store.orders_applied == 1


def test_manual_tags_are_set_once_and_removed(store: SqlProfileStore) -> None:
    store.apply_events([ev("view", item_id="a")])
    first = NOW - timedelta(hours=1)

    assert store.set_manual_tag("m-1", "vip", first) == [ManualTag("vip", first)]
    assert store.set_manual_tag("m-1", "vip", NOW) == [ManualTag("vip", first)]
    assert [t.tag for t in store.set_manual_tag("m-1", "press", NOW) or []] == ["press", "vip"]
    assert _get(store).manual_tags == [ManualTag("press", NOW), ManualTag("vip", first)]
    assert store.remove_manual_tag("m-1", "vip") == [ManualTag("press", NOW)]
    assert store.remove_manual_tag("m-1", "never-set") == [ManualTag("press", NOW)]


def test_manual_tags_need_a_known_member_and_are_capped(make_store: StoreFactory) -> None:
    store = make_store(max_manual_tags=2)
    store.apply_events([ev("view", item_id="a")])

    assert store.set_manual_tag("m-404", "vip", NOW) is None
    assert store.remove_manual_tag("m-404", "vip") is None
    store.set_manual_tag("m-1", "a", NOW)
    store.set_manual_tag("m-1", "b", NOW)
    with pytest.raises(TooManyTags):
        store.set_manual_tag("m-1", "c", NOW)
    assert len(store.set_manual_tag("m-1", "b", NOW) or []) == 2  # setting again is fine


def test_a_store_made_before_portraits_is_refused_with_what_to_do(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE members (member_id VARCHAR(128) PRIMARY KEY, first_seen TIMESTAMP, "
                "last_seen TIMESTAMP, last_order_at TIMESTAMP, orders INTEGER, spend FLOAT, "
                "events INTEGER, recent TEXT)"
            )
        )

    with pytest.raises(OutdatedSchema, match="lacks first_order_at, discounted_orders, channels"):
        SqlProfileStore(engine, ProfilesSettings())


def test_category_rows_are_read_in_the_order_of_category_stats() -> None:
    # _load_members builds CategoryStat from a row's columns by position.
    columns = [column.name for column in member_categories.columns]

    assert columns[:2] == ["member_id", "category"]
    assert columns[2:] == [field.name for field in dataclasses.fields(CategoryStat)]
