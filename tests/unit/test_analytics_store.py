"""What the analytics store keeps and how it attributes: impressions, outcomes attributed by
recommendation_id or by a shown item within the window, refunds, redelivery, arrival out of
order, erasure and identity links, and the figures a report reads.

A conformance suite: each test runs on SQLite and on PostgreSQL (tests/unit/conftest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, select, text

from services.analytics.attribution import LAST_TOUCH, NAMED, Outcome
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import SqlAnalyticsStore
from services.common.events import Event
from services.common.members import Erase, Link

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SECRET = b"a test secret of enough length!!"
HOUR = timedelta(hours=1)


@pytest.fixture
def store(engine: Engine) -> SqlAnalyticsStore:
    return SqlAnalyticsStore(engine, AnalyticsSettings(attribution_window_hours=24), SECRET)


def ev(type_: str, member: str, at: datetime, **fields: Any) -> Event:
    return Event.model_validate({"type": type_, "member_id": member, "timestamp": at, **fields})


def shown(
    member: str,
    rec: str,
    items: Sequence[str],
    at: datetime,
    variant: str = "control",
    experiment: str = "exp-1",
    latency_ms: Any = None,
) -> Event:
    return ev(
        "impression",
        member,
        at,
        recommendation_id=rec,
        items=[{"item_id": item, "category": "garden"} for item in items],
        context={
            "placement": "home",
            "variant": variant,
            "experiment_id": experiment,
            "model": "blend",
            "degraded": False,
            "scores": {item: 1.0 for item in items},
            "sources": {},
            **({} if latency_ms is None else {"latency_ms": latency_ms}),
        },
    )


def click(member: str, item: str, at: datetime, rec: str | None = None) -> Event:
    return ev("click", member, at, item_id=item, recommendation_id=rec)


def cart(member: str, item: str, at: datetime, rec: str | None = None) -> Event:
    return ev("add_to_cart", member, at, item_id=item, recommendation_id=rec)


def buy(
    member: str,
    order: str,
    lines: Sequence[tuple[str, int, float]],
    at: datetime,
    rec: str | None = None,
) -> Event:
    items = [{"item_id": i, "quantity": q, "price": p} for i, q, p in lines]
    return ev("purchase", member, at, order_id=order, items=items, recommendation_id=rec)


def refund(member: str, order: str, at: datetime, **fields: Any) -> Event:
    return ev("refund", member, at, order_id=order, **fields)


def one(store: SqlAnalyticsStore, member: str, kind: str) -> Outcome:
    found = [o for o in store.outcomes(member) if o.kind == kind]
    assert len(found) == 1, found
    return found[0]


def owed_to(store: SqlAnalyticsStore, member: str) -> dict[str, str | None]:
    """Each of the member's outcomes (by kind and item) -> the recommendation it is owed to."""
    return {
        f"{o.kind}:{','.join(line.item_id for line in o.lines)}": (
            o.attribution.recommendation_id if o.attribution else None
        )
        for o in store.outcomes(member)
    }


def net_revenue(store: SqlAnalyticsStore, member: str) -> float:
    return sum(
        o.attribution.revenue - o.refunded
        for o in store.outcomes(member)
        if o.attribution and o.kind == "purchase"
    )


def every_value(engine: Engine) -> str:
    """Every cell of every table, as one text: what a search of the store would see."""
    found = MetaData()
    found.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in found.sorted_tables for row in conn.execute(select(table))
        )


def test_impressions_and_outcomes_are_stored_and_read_back(store: SqlAnalyticsStore) -> None:
    applied = store.apply_events(
        [
            shown("m-1", "r-1", ["sku-1", "sku-2", "sku-3"], NOW),
            click("m-1", "sku-2", NOW + HOUR, rec="r-1"),
            buy("m-1", "o-1", [("sku-2", 2, 10.0), ("sku-9", 1, 5.0)], NOW + 2 * HOUR),
            ev("view", "m-1", NOW, item_id="sku-1"),
        ]
    )

    assert applied == 4
    impression = store.impression("r-1")
    assert impression is not None
    assert impression.item_ids == ("sku-1", "sku-2", "sku-3")
    assert (impression.member_id, impression.shown_at) == ("m-1", NOW)
    assert (impression.placement, impression.experiment_id, impression.variant) == (
        "home",
        "exp-1",
        "control",
    )
    assert impression.model == "blend" and not impression.degraded
    assert store.impression("r-unknown") is None
    clicked = one(store, "m-1", "click")
    assert clicked.attribution is not None
    assert clicked.attribution.recommendation_id == "r-1" and clicked.attribution.by == NAMED
    assert clicked.attribution.variant == "control" and clicked.attribution.item_ids == ("sku-2",)
    bought = one(store, "m-1", "purchase")
    assert bought.amount == 25.0 and bought.order_id == "o-1"
    assert bought.attribution is not None and bought.attribution.by == LAST_TOUCH
    # Only the line whose item was shown: 2 x 10.0, not the 5.0 of sku-9.
    assert bought.attribution.revenue == 20.0 and bought.attribution.item_ids == ("sku-2",)
    assert store.daily_spend("m-1") == {NOW.date(): 25.0}


def test_a_named_recommendation_wins_whenever_the_outcome_came(store: SqlAnalyticsStore) -> None:
    store.apply_events(
        [
            shown("m-1", "r-old", ["sku-1"], NOW - 72 * HOUR),
            shown("m-1", "r-new", ["sku-1"], NOW - HOUR),
            click("m-1", "sku-1", NOW, rec="r-old"),
            # Names a recommendation of another member: last touch decides instead.
            shown("m-2", "r-other", ["sku-1"], NOW - HOUR),
            click("m-1", "sku-1", NOW + timedelta(minutes=1), rec="r-other"),
        ]
    )

    owed = [o.attribution for o in store.outcomes("m-1")]
    assert [(a.recommendation_id, a.by) for a in owed if a] == [
        ("r-old", NAMED),
        ("r-new", LAST_TOUCH),
    ]


def test_last_touch_is_the_latest_impression_showing_the_item_within_the_window(
    store: SqlAnalyticsStore,
) -> None:
    store.apply_events(
        [
            shown("m-1", "r-3h", ["sku-1", "sku-2"], NOW - 3 * HOUR),
            shown("m-1", "r-1h", ["sku-1"], NOW - HOUR),
            shown("m-1", "r-30m", ["sku-7"], NOW - HOUR / 2),  # latest, but not the item
            shown("m-1", "r-later", ["sku-1"], NOW + HOUR),  # after the click
            shown("m-2", "r-theirs", ["sku-1"], NOW - HOUR / 4),  # someone else's
            click("m-1", "sku-1", NOW),
            cart("m-1", "sku-2", NOW),
            # Shown 25 hours before: outside the 24-hour window, attributed to nothing.
            shown("m-3", "r-25h", ["sku-1"], NOW - 25 * HOUR),
            click("m-3", "sku-1", NOW),
        ]
    )

    assert owed_to(store, "m-1") == {"click:sku-1": "r-1h", "add_to_cart:sku-2": "r-3h"}
    assert owed_to(store, "m-3") == {"click:sku-1": None}


def test_a_purchase_is_worth_its_shown_lines(store: SqlAnalyticsStore) -> None:
    store.apply_events(
        [
            shown("m-1", "r-1", ["sku-1", "sku-2"], NOW - HOUR),
            buy("m-1", "o-1", [("sku-1", 3, 4.0), ("sku-2", 1, 10.0), ("sku-3", 1, 99.0)], NOW),
            # No price on its one line: the stated revenue is its value.
            ev("purchase", "m-1", NOW, order_id="o-2", item_id="sku-2", revenue=12.5),
            # Named, but none of its items was shown: a purchase all the same, worth 0.
            buy("m-1", "o-3", [("sku-9", 1, 50.0)], NOW, rec="r-1"),
        ]
    )

    revenue = {o.order_id: o.attribution.revenue for o in store.outcomes("m-1") if o.attribution}
    assert revenue == {"o-1": 22.0, "o-2": 12.5, "o-3": 0.0}
    assert store.daily_spend("m-1") == {NOW.date(): 121.0 + 12.5 + 50.0}


def test_refunds_reverse_the_attributed_revenue_of_their_lines(store: SqlAnalyticsStore) -> None:
    store.apply_events(
        [
            shown("m-1", "r-1", ["sku-1", "sku-2"], NOW - HOUR),
            buy("m-1", "o-1", [("sku-1", 2, 10.0), ("sku-2", 1, 30.0), ("sku-3", 1, 40.0)], NOW),
        ]
    )
    assert net_revenue(store, "m-1") == 50.0

    # One of the two sku-1 at the price paid, and sku-3, which was never attributed.
    store.apply_events(
        [
            refund("m-1", "o-1", NOW + HOUR, items=[{"item_id": "sku-1"}]),
            refund("m-1", "o-1", NOW + HOUR, items=[{"item_id": "sku-3", "price": 40.0}]),
        ]
    )
    assert net_revenue(store, "m-1") == 40.0

    # The rest of the order, without lines: never more than was attributed.
    store.apply_events([refund("m-1", "o-1", NOW + 2 * HOUR, revenue=90.0)])
    assert net_revenue(store, "m-1") == 0.0
    assert one(store, "m-1", "purchase").attribution.revenue == 50.0  # type: ignore[union-attr]
    # Spend counts every purchase and refund, attributed or not (the refund of sku-1 had
    # no price of its own: it says nothing of its value).
    assert store.daily_spend("m-1") == {NOW.date(): 90.0 - 40.0 - 90.0}


def test_a_refund_without_lines_reverses_its_share_of_the_order(store: SqlAnalyticsStore) -> None:
    store.apply_events(
        [
            shown("m-1", "r-1", ["sku-1"], NOW - HOUR),
            buy("m-1", "o-1", [("sku-1", 1, 60.0), ("sku-2", 1, 40.0)], NOW),
            refund("m-1", "o-1", NOW + HOUR, revenue=25.0),  # a quarter of the order
            refund("m-1", "o-unknown", NOW + HOUR, revenue=25.0),
        ]
    )

    assert net_revenue(store, "m-1") == pytest.approx(45.0)


def test_delivering_events_again_changes_nothing(store: SqlAnalyticsStore) -> None:
    events = [
        shown("m-1", "r-1", ["sku-1"], NOW - HOUR),
        click("m-1", "sku-1", NOW),
        buy("m-1", "o-1", [("sku-1", 1, 10.0)], NOW),
        refund("m-1", "o-1", NOW + HOUR, items=[{"item_id": "sku-1"}]),
    ]
    store.apply_events(events)
    before = {o.event_id: o for o in store.outcomes("m-1")}, store.daily_spend("m-1")

    assert store.apply_events(events) == 0
    # A batch repeating an event, and an impression sent twice under two event ids.
    again = click("m-1", "sku-1", NOW)
    assert store.apply_events([again, again]) == 1
    store.apply_events([shown("m-1", "r-1", ["sku-1", "sku-2"], NOW)])

    after = {o.event_id: o for o in store.outcomes("m-1")}
    assert set(after) == {*before[0], again.event_id}
    assert ({k: after[k] for k in before[0]}, store.daily_spend("m-1")) == before
    assert store.impression("r-1").item_ids == ("sku-1",)  # type: ignore[union-attr]


def test_an_impression_arriving_after_its_outcomes_claims_them(engine: Engine) -> None:
    """Impressions come on a topic of their own: the outcome of arrival order must not
    show. Applied in the shop's order and with every impression last, the store agrees."""
    impressions = [
        shown("m-1", "r-1", ["sku-1", "sku-2"], NOW - 2 * HOUR),
        shown("m-1", "r-2", ["sku-1"], NOW - HOUR),
        shown("m-1", "r-named", ["sku-5"], NOW - 3 * HOUR),
    ]
    outcomes = [
        click("m-1", "sku-1", NOW),
        cart("m-1", "sku-5", NOW, rec="r-named"),
        buy("m-1", "o-1", [("sku-1", 1, 10.0), ("sku-2", 1, 20.0)], NOW),
        refund("m-1", "o-1", NOW + HOUR, items=[{"item_id": "sku-1"}]),
    ]
    in_order = SqlAnalyticsStore(engine, AnalyticsSettings(), SECRET)
    in_order.apply_events([*impressions, *outcomes])
    expected = in_order.outcomes("m-1")
    with engine.begin() as conn:
        for table in ("outcomes", "impressions", "member_spend", "processed_events"):
            conn.execute(text(f"DELETE FROM {table}"))

    late = SqlAnalyticsStore(engine, AnalyticsSettings(), SECRET)
    late.apply_events(outcomes)
    assert all(o.attribution is None for o in late.outcomes("m-1"))
    late.apply_events(impressions[:1])
    # r-1 showed both items: the whole purchase is its, less the refunded sku-1.
    assert net_revenue(late, "m-1") == 20.0
    late.apply_events(impressions[1:])

    assert late.outcomes("m-1") == expected
    assert owed_to(late, "m-1") == {
        "click:sku-1": "r-2",
        "add_to_cart:sku-5": "r-named",
        "purchase:sku-1,sku-2": "r-2",
        "refund:sku-1": None,
    }
    # The purchase moved to r-2 (sku-1 only), and its refund with it.
    assert net_revenue(late, "m-1") == 0.0


def test_erasure_removes_every_row_of_the_member_and_older_events_stay_out(
    store: SqlAnalyticsStore, engine: Engine
) -> None:
    theirs = [
        shown("erase-me-42", "r-1", ["sku-1"], NOW - HOUR),
        click("erase-me-42", "sku-1", NOW),
        buy("erase-me-42", "o-1", [("sku-1", 1, 10.0)], NOW),
    ]
    store.apply_events([*theirs, shown("keep-me-7", "r-2", ["sku-1"], NOW)])
    store.apply_commands([Link("anon-erase-me", "erase-me-42", NOW)])
    store.apply_events([click("anon-erase-me", "sku-1", NOW)])

    store.apply_commands([Erase("erase-me-42", "e-1", NOW + HOUR)])

    assert store.outcomes("erase-me-42") == [] and store.impression("r-1") is None
    assert store.daily_spend("erase-me-42") == {}
    assert store.impression("r-2") is not None
    values = every_value(engine)
    assert "erase-me" not in values and "r-1'" not in values
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT removed FROM member_erasures ORDER BY removed")).all()
    assert [removed > 0 for (removed,) in audit] == [False, True]  # the visitor's, the member's

    # Replayed from the start of the log (same ids), and one in flight with a new id: both
    # from before the erasure, neither is applied.
    store.apply_events(theirs)
    assert store.apply_events([click("erase-me-42", "sku-1", NOW + HOUR / 2)]) == 0
    assert store.apply_events([click("anon-erase-me", "sku-1", NOW + HOUR / 2)]) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outcomes")).scalar() == 0
    # The erasure itself again: nothing more happens.
    store.apply_commands([Erase("erase-me-42", "e-1", NOW + HOUR)])
    # A new life after the erasure is a new member.
    store.apply_events([buy("erase-me-42", "o-9", [("sku-1", 1, 5.0)], NOW + 2 * HOUR)])
    assert len(store.outcomes("erase-me-42")) == 1


def test_a_linked_visitors_history_counts_for_the_member(store: SqlAnalyticsStore) -> None:
    store.apply_events(
        [
            shown("anon-1", "r-1", ["sku-1"], NOW - 2 * HOUR, variant="treatment"),
            buy("anon-1", "o-1", [("sku-1", 1, 15.0)], NOW - HOUR),
            # The member's own click on what the visitor was shown: owed to it once linked.
            click("m-1", "sku-1", NOW),
        ]
    )
    assert owed_to(store, "m-1") == {"click:sku-1": None}
    link = Link("anon-1", "m-1", NOW)

    store.apply_commands([link])
    store.apply_commands([link])
    store.apply_events([cart("anon-1", "sku-1", NOW + HOUR)])

    assert store.outcomes("anon-1") == [] and store.daily_spend("anon-1") == {}
    assert owed_to(store, "m-1") == {
        "purchase:sku-1": "r-1",
        "click:sku-1": "r-1",
        "add_to_cart:sku-1": "r-1",
    }
    assert store.daily_spend("m-1") == {(NOW - HOUR).date(): 15.0}
    figures = store.experiment_figures("exp-1")
    assert set(figures.variants) == {"treatment"}
    assert figures.variants["treatment"].members == 1


def test_the_figures_of_an_experiment_are_per_member_of_its_window(
    store: SqlAnalyticsStore,
) -> None:
    start = NOW - 24 * HOUR
    store.apply_events(
        [
            # Before the start: a pre-period purchase, and an impression not counted.
            buy("m-1", "o-0", [("sku-0", 1, 100.0)], start - 10 * 24 * HOUR),
            buy("m-1", "o-old", [("sku-0", 1, 1000.0)], start - 200 * 24 * HOUR),
            shown("m-1", "r-0", ["sku-1"], start - HOUR, variant="treatment"),
            shown("m-1", "r-1", ["sku-1"], start + HOUR, variant="control"),
            shown("m-1", "r-2", ["sku-2"], start + 2 * HOUR, variant="treatment"),
            click("m-1", "sku-1", start + 3 * HOUR),
            buy("m-1", "o-1", [("sku-2", 2, 5.0)], start + 3 * HOUR),
            shown("m-2", "r-3", ["sku-1"], start + HOUR, variant="treatment"),
            shown("m-2", "r-4", ["sku-1"], start + 2 * HOUR, variant="treatment"),
            cart("m-2", "sku-1", start + 3 * HOUR, rec="r-3"),
            shown("m-3", "r-5", ["sku-1"], start + HOUR, variant="treatment", experiment="x"),
            shown("m-4", "r-6", ["sku-1"], NOW + HOUR, variant="control"),  # after the stop
        ]
    )

    figures = store.experiment_figures("exp-1", start, NOW)

    assert (figures.started_at, figures.stopped_at, figures.crossed) == (start, NOW, 1)
    control, treatment = figures.variants["control"], figures.variants["treatment"]
    assert control.members == 1 and treatment.members == 1
    # m-1 is counted in control, the variant shown first within the window.
    assert list(control.impressions) == [2]
    assert (list(control.clicks), list(control.purchases), list(control.revenue)) == (
        [1],
        [1],
        [10.0],
    )
    assert list(control.pre_spend) == [100.0]  # the 90-day pre-period only
    assert (list(treatment.impressions), list(treatment.carts)) == ([2], [1])
    assert list(treatment.pre_spend) == [0.0]
    # Without a start: from the first impression, which moves the pre-period too.
    whole = store.experiment_figures("exp-1")
    assert whole.started_at == start - HOUR
    assert sum(f.members for f in whole.variants.values()) == 3
    assert store.experiment_figures("exp-none").variants == {}


def test_serving_latencies_and_refunds_reach_the_figures_of_an_experiment(
    store: SqlAnalyticsStore,
) -> None:
    start = NOW - 24 * HOUR
    store.apply_events(
        [
            shown("m-1", "r-1", ["sku-1"], start + HOUR, latency_ms=12.5),
            shown("m-1", "r-2", ["sku-2"], start + 2 * HOUR, latency_ms=12.5),
            # Counted in control with m-1's impressions, but its latency is the treatment's.
            shown("m-1", "r-3", ["sku-3"], start + 3 * HOUR, variant="treatment", latency_ms=40),
            shown("m-2", "r-4", ["sku-1"], start + HOUR, latency_ms=30.25),
            # Older impressions carry none; a shop's own may say anything.
            shown("m-2", "r-5", ["sku-1"], start + 2 * HOUR),
            shown("m-2", "r-6", ["sku-1"], start + 3 * HOUR, latency_ms="fast"),
            shown("m-2", "r-7", ["sku-1"], start + 4 * HOUR, latency_ms=-1),
            shown("m-3", "r-8", ["sku-1"], start - HOUR, latency_ms=99.0),  # before the start
            buy("m-1", "o-1", [("sku-1", 2, 10.0)], start + 5 * HOUR),
            refund("m-1", "o-1", start + 6 * HOUR, items=[{"item_id": "sku-1", "quantity": 1}]),
        ]
    )

    figures = store.experiment_figures("exp-1", start, NOW)

    impression = store.impression("r-4")
    assert impression is not None and impression.latency_ms == 30.25
    unsaid = [store.impression(r) for r in ("r-5", "r-6", "r-7")]
    assert [(i is not None, i and i.latency_ms) for i in unsaid] == [(True, None)] * 3
    latencies = {
        name: dict(zip(found.values.tolist(), found.counts.tolist(), strict=True))
        for name, found in figures.latencies.items()
    }
    assert latencies == {"control": {12.5: 2, 30.25: 1}, "treatment": {40.0: 1}}
    control = figures.variants["control"]
    by_member = dict(zip(control.impressions.tolist(), control.refunded.tolist(), strict=True))
    # m-1 (3 impressions) bought 20.0 of what was shown and returned half of it.
    assert by_member == {3.0: 10.0, 4.0: 0.0}
    assert sorted(control.revenue.tolist()) == [0.0, 10.0]


def test_processed_event_ids_are_forgotten_past_the_retention(
    store: SqlAnalyticsStore, engine: Engine
) -> None:
    store.apply_events([click("m-1", "sku-1", NOW), click("m-1", "sku-2", NOW)])

    assert store.prune_processed(datetime.now(UTC) - HOUR) == 0
    assert store.prune_processed(datetime.now(UTC) + HOUR) == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM processed_events")).scalar() == 0
    # The outcomes themselves stay, and a redelivery is still recognised by its event id.
    assert len(store.outcomes("m-1")) == 2
