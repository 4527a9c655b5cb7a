"""What the profiles store does with members-topic commands and consent: erasure with
tombstones, identity links merged exactly once, consent choices, saved segments.

A conformance suite: each test runs on SQLite and on PostgreSQL (tests/unit/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, select, text

from services.common.events import Event
from services.common.members import Consent, Erase, Link
from services.profiles.segments import SegmentDefinition
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SegmentExists, SqlProfileStore, TooManySegments

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET = b"a test secret of enough length!!"


@pytest.fixture
def store(engine: Engine) -> SqlProfileStore:
    return SqlProfileStore(engine, ProfilesSettings(max_segments=3), SECRET)


def ev(type_: str, member: str, *, at: datetime | None = None, **fields: Any) -> Event:
    return Event.model_validate(
        {"type": type_, "member_id": member, "timestamp": at or NOW, **fields}
    )


def view(member: str, item: str, category: str, at: datetime | None = None) -> Event:
    return ev("view", member, at=at, item_id=item, items=[{"item_id": item, "category": category}])


def buy(member: str, item: str, category: str, order: str, at: datetime | None = None) -> Event:
    line = {"item_id": item, "category": category, "price": 10.0, "quantity": 1}
    return ev("purchase", member, at=at, order_id=order, items=[line])


def every_value(engine: Engine) -> str:
    """Every cell of every table, as one text: what a search of the store would see."""
    found = MetaData()
    found.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in found.sorted_tables for row in conn.execute(select(table))
        )


def test_erasure_removes_every_row_of_the_member_and_keeps_no_id(
    store: SqlProfileStore, engine: Engine
) -> None:
    store.apply_events(
        [view("erase-me-42", "sku-1", "garden"), buy("erase-me-42", "sku-2", "garden", "o-1")]
    )
    store.apply_events([view("keep-me-7", "sku-1", "garden")])
    store.set_manual_tag("erase-me-42", "vip", NOW)
    store.set_consent("erase-me-42", {"email": True}, NOW)

    store.apply_commands([Erase("erase-me-42", "e-1", NOW + timedelta(seconds=1))])

    assert store.get("erase-me-42") is None
    assert store.consent_choices("erase-me-42") == ({}, None)
    assert store.get("keep-me-7") is not None
    assert "erase-me-42" not in every_value(engine)
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT erasure_id, removed FROM member_erasures")).all()
    assert [(erasure_id, removed > 0) for erasure_id, removed in audit] == [("e-1", True)]


def test_events_from_before_an_erasure_never_come_back(store: SqlProfileStore) -> None:
    store.apply_events([view("m-1", "sku-1", "garden", at=NOW - timedelta(minutes=5))])
    store.apply_commands([Erase("m-1", "e-1", NOW)])

    # In flight when the erasure was asked (happened before it), and a replay from the
    # start of the log (the same event ids again, on a store that forgot nothing else).
    late = view("m-1", "sku-3", "kitchen", at=NOW - timedelta(seconds=2))
    assert store.apply_events([late]) == 0
    assert store.get("m-1") is None

    # A new life after the erasure is a new member.
    store.apply_events([view("m-1", "sku-4", "toys", at=NOW + timedelta(seconds=5))])
    again = store.get("m-1")
    assert again is not None and set(again.categories) == {"toys"} and again.events == 1


def test_replaying_the_erasure_itself_changes_nothing(
    store: SqlProfileStore, engine: Engine
) -> None:
    store.apply_events([view("m-1", "sku-1", "garden")])
    erase = Erase("m-1", "e-1", NOW + timedelta(seconds=1))
    store.apply_commands([erase])
    store.apply_commands([erase])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM member_erasures")).scalar() == 1


def test_a_link_merges_the_visitors_history_once(store: SqlProfileStore) -> None:
    store.apply_events(
        [
            view("anon-1", "sku-1", "garden"),
            view("anon-1", "sku-2", "garden"),
            buy("anon-1", "sku-9", "tools", "o-1"),
        ]
    )
    store.apply_events([view("m-1", "sku-3", "kitchen")])
    link = Link("anon-1", "m-1", NOW)

    store.apply_commands([link])
    store.apply_commands([link])

    member = store.get("m-1")
    assert member is not None
    assert member.events == 4
    assert member.orders == 1 and member.spend == 10.0
    assert set(member.categories) == {"garden", "kitchen", "tools"}
    assert member.categories["garden"].events == 2
    assert "sku-9" in member.purchased
    assert {r.item_id for r in member.recent} >= {"sku-1", "sku-2", "sku-3"}
    assert store.get("anon-1") is None


def test_later_visitor_events_land_on_the_member(store: SqlProfileStore) -> None:
    store.apply_commands([Link("anon-1", "m-1", NOW)])
    store.apply_events([view("anon-1", "sku-1", "garden")])

    assert store.get("anon-1") is None
    member = store.get("m-1")
    assert member is not None and member.events == 1


def test_a_link_before_the_members_first_event_makes_the_member(store: SqlProfileStore) -> None:
    store.apply_events([view("anon-1", "sku-1", "garden")])
    store.apply_commands([Link("anon-1", "m-new", NOW)])
    member = store.get("m-new")
    assert member is not None and set(member.categories) == {"garden"}


def test_erasing_a_member_erases_the_visitors_linked_to_them(
    store: SqlProfileStore, engine: Engine
) -> None:
    store.apply_events([view("anon-77", "sku-1", "garden")])
    store.apply_commands(
        [Link("anon-77", "m-1", NOW), Erase("m-1", "e-1", NOW + timedelta(seconds=1))]
    )

    # The visitor's event still in flight must not make a profile of its own.
    store.apply_events([view("anon-77", "sku-2", "garden", at=NOW)])
    assert store.get("anon-77") is None and store.get("m-1") is None
    text_of_store = every_value(engine)
    assert "anon-77" not in text_of_store and "'m-1'" not in text_of_store


def test_consent_changes_are_partial_and_the_newest_wins(store: SqlProfileStore) -> None:
    choices, at = store.set_consent("m-1", {"personalization": False, "email": True}, NOW)
    assert choices == {"personalization": False, "email": True} and at == NOW

    store.set_consent("m-1", {"email": False}, NOW + timedelta(seconds=1))
    # A bus command older than the API's choice cannot undo it, but fills keys never set.
    store.apply_commands([Consent("m-1", NOW, {"email": True, "sms": True})])

    choices, at = store.consent_choices("m-1")
    assert choices == {"personalization": False, "email": False, "sms": True}
    assert at == NOW + timedelta(seconds=1)


def test_profiles_carry_consent(store: SqlProfileStore) -> None:
    store.apply_events([view("m-1", "sku-1", "garden"), view("m-2", "sku-1", "garden")])
    store.set_consent("m-2", {"personalization": False}, NOW)

    assert store.get("m-2").consent == {"personalization": False}  # type: ignore[union-attr]
    by_id = {p.member_id: p.consent for p in store.iter_profiles(batch=1)}
    assert by_id == {"m-1": {}, "m-2": {"personalization": False}}


def test_visitors_consent_moves_to_the_member(store: SqlProfileStore) -> None:
    store.apply_events([view("anon-1", "sku-1", "garden")])
    store.set_consent("anon-1", {"email": True}, NOW)
    store.apply_commands([Link("anon-1", "m-1", NOW)])
    assert store.consent_choices("m-1")[0] == {"email": True}


def test_segments_are_saved_listed_and_deleted(store: SqlProfileStore) -> None:
    first = store.put_segment(SegmentDefinition("big", "monetary >= 100"), NOW)
    assert first.created_at == first.updated_at == NOW
    later = NOW + timedelta(minutes=1)
    changed = store.put_segment(SegmentDefinition("big", "monetary >= 200", "spenders"), later)
    assert changed.created_at == NOW and changed.updated_at == later

    with pytest.raises(SegmentExists):
        store.put_segment(SegmentDefinition("big", "monetary >= 1"), later, create_only=True)
    store.put_segment(SegmentDefinition("b", "frequency >= 2"), NOW)
    store.put_segment(SegmentDefinition("c", "frequency >= 3"), NOW)
    with pytest.raises(TooManySegments):
        store.put_segment(SegmentDefinition("d", "frequency >= 4"), NOW)

    assert next((s.name, s.condition, s.description) for s in store.segments()) == (
        "b",
        "frequency >= 2",
        "",
    )
    assert store.delete_segment("big") and not store.delete_segment("big")
    assert [s.name for s in store.segments()] == ["b", "c"]


def test_segment_sizes_keep_a_point_per_day_and_go_with_their_segment(
    store: SqlProfileStore,
) -> None:
    today = NOW.date()
    store.put_segment(SegmentDefinition("big", "monetary >= 100"), NOW)
    store.record_sizes(today - timedelta(days=40), {"big": 1}, keep_days=30)
    store.record_sizes(today - timedelta(days=2), {"big": 3, "new": 8}, keep_days=30)
    store.record_sizes(today, {"big": 4, "new": 9}, keep_days=30)
    store.record_sizes(today, {"big": 5, "new": 9}, keep_days=30)  # the day's last count

    history = store.size_history(today - timedelta(days=60))
    assert history == {
        "big": [(today - timedelta(days=2), 3), (today, 5)],
        "new": [(today - timedelta(days=2), 8), (today, 9)],
    }
    assert store.size_history(today)["big"] == [(today, 5)]
    store.delete_segment("big")
    assert list(store.size_history(today - timedelta(days=60))) == ["new"]


def test_an_erasure_delivered_again_leaves_the_new_life_alone(store: SqlProfileStore) -> None:
    erase = Erase("m-1", "e-1", NOW)
    store.apply_events([view("m-1", "sku-1", "garden", at=NOW - timedelta(days=1))])
    store.apply_commands([erase])
    store.apply_events([view("m-1", "sku-2", "toys", at=NOW + timedelta(minutes=1))])

    store.apply_commands([erase])  # a redelivery after a crash, or a replay

    again = store.get("m-1")
    assert again is not None and set(again.categories) == {"toys"}


def test_a_link_back_to_its_own_visitor_changes_nothing(store: SqlProfileStore) -> None:
    store.apply_events([view("m-1", "sku-1", "garden"), view("anon-1", "sku-2", "toys")])
    store.apply_commands([Link("anon-1", "m-1", NOW)])

    store.apply_commands([Link("m-1", "anon-1", NOW)])  # the reverse: a cycle

    member = store.get("m-1")
    assert member is not None and member.events == 2
    assert set(member.categories) == {"garden", "toys"}


def test_links_stay_one_hop_deep(store: SqlProfileStore, engine: Engine) -> None:
    store.apply_commands([Link("anon-1", "m-old", NOW), Link("m-old", "m-new", NOW)])

    store.apply_events([view("anon-1", "sku-1", "garden")])

    assert store.get("m-old") is None
    member = store.get("m-new")
    assert member is not None and member.events == 1
    store.apply_commands([Erase("m-new", "e-1", NOW + timedelta(seconds=1))])
    assert "anon-1" not in every_value(engine) and "m-old" not in every_value(engine)


def test_consent_from_events_follows_links_and_tombstones(store: SqlProfileStore) -> None:
    store.apply_events([view("m-1", "sku-1", "garden")])
    store.apply_commands([Link("anon-1", "m-1", NOW), Consent("anon-1", NOW, {"email": True})])
    assert store.consent_choices("m-1")[0] == {"email": True}
    assert store.consent_choices("anon-1") == ({}, None)

    store.apply_commands(
        [Erase("m-2", "e-2", NOW), Consent("m-2", NOW - timedelta(1), {"sms": True})]
    )
    assert store.consent_choices("m-2") == ({}, None)


def test_consent_from_a_clock_running_ahead_cannot_outrank_the_api(store: SqlProfileStore) -> None:
    store.apply_commands([Consent("m-1", NOW + timedelta(minutes=50), {"email": True})])
    store.set_consent("m-1", {"email": False}, datetime.now(UTC) + timedelta(seconds=1))
    assert store.consent_choices("m-1")[0] == {"email": False}
