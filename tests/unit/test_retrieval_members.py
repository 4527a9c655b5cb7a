"""Retrieval follows the members topic: erasures (with tombstones that outlive replays) and
identity links, on SQLite and on PostgreSQL (see conftest.py), and through its consumer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from services.common.bus.base import EVENTS_TOPIC, MEMBERS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.events import Event, event_records
from services.common.members import Consent, Erase, Link, command_message, member_digest
from services.retrieval.server import interaction_worker
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore, erasures, links
from tests import interactions as stored

SECRET = b"a-test-secret-of-32-characters!!"
# Every line weighs 1, so that the histories below read as counts of events.
SETTINGS = RetrievalSettings(event_weights={"view": 1.0, "purchase": 1.0})
START = datetime(2026, 3, 1, tzinfo=UTC)
APPLIED = datetime(2026, 3, 9, tzinfo=UTC)
ERASED_AT = START + timedelta(days=2)
MEMBER = "alice-the-member-4417"
VISITOR = "anon-visitor-9d3a"


def view(member: str, item: str, minutes: int, event_id: str | None = None) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id or f"{member}-{item}-{minutes}",
            "type": "view",
            "member_id": member,
            "item_id": item,
            "timestamp": START + timedelta(minutes=minutes),
        }
    )


def erase(member: str = MEMBER, erasure_id: str = "erasure-1") -> Erase:
    return Erase(member_id=member, erasure_id=erasure_id, at=ERASED_AT)


def link(visitor: str = VISITOR, member: str = MEMBER, minutes: int = 30) -> Link:
    return Link(visitor, member, START + timedelta(minutes=minutes), "segment")


def make_store(engine: Engine) -> SqlInteractionStore:
    return SqlInteractionStore(engine, SETTINGS.event_weights, SECRET, clock=lambda: APPLIED)


@pytest.fixture
def store(engine: Engine) -> SqlInteractionStore:
    return make_store(engine)


def everyone(store: SqlInteractionStore) -> set[str]:
    return {i.member_id for i in stored.interactions(store)}


def test_erasure_removes_the_member_and_their_linked_visitors(
    store: SqlInteractionStore, engine: Engine
) -> None:
    store.apply_events([view(MEMBER, "a", 1), view(MEMBER, "b", 2), view("bob", "a", 3)])
    store.apply_events([view(VISITOR, "c", 4)])
    assert store.link_visitors([link()]) == 1
    other_visitor = "anon-visitor-second"
    assert store.link_visitors([link(other_visitor)]) == 1
    store.apply_events([view(other_visitor, "d", 40)])  # lands on the member
    assert set(stored.history(store, MEMBER, 100)) == {"a", "b", "c", "d"}

    removed = store.erase_member(erase())

    assert removed == 4
    assert stored.history(store, MEMBER, 100) == {}
    assert stored.history(store, VISITOR, 100) == {}
    assert stored.history(store, other_visitor, 100) == {}
    assert everyone(store) == {"bob"}
    assert stored.history(store, "bob", 100) == {"a": 1.0}
    with engine.connect() as conn:
        assert list(conn.execute(select(links))) == []
        audit = conn.execute(
            select(erasures.c.member_digest, erasures.c.removed, erasures.c.requested_at)
        ).all()
    # One entry per erased id, holding a digest of it and figures, never the id itself.
    digests = {member_digest(SECRET, i): i for i in (MEMBER, VISITOR, other_visitor)}
    assert {digests[d] for d, _, _ in audit} == {MEMBER, VISITOR, other_visitor}
    assert sorted(removed for _, removed, _ in audit) == [0, 0, 4]
    assert {at.replace(tzinfo=at.tzinfo or UTC) for _, _, at in audit} == {ERASED_AT}
    assert not {MEMBER, VISITOR, other_visitor} & {str(v) for row in audit for v in row}


def test_an_event_in_flight_from_before_the_erasure_is_not_recorded(
    store: SqlInteractionStore,
) -> None:
    store.apply_events([view(MEMBER, "a", 1)])
    store.erase_member(erase())

    # Sent before the erasure, delivered after it (or redelivered): kept out.
    late = view(MEMBER, "b", 60)
    assert store.apply_events([late, view(MEMBER, "a", 1)]) == 0

    assert stored.history(store, MEMBER, 100) == {}
    assert everyone(store) == set()


def test_the_erased_members_visitors_stay_erased_too(store: SqlInteractionStore) -> None:
    store.apply_events([view(VISITOR, "c", 1)])
    store.link_visitors([link()])
    store.erase_member(erase())

    store.apply_events([view(VISITOR, "d", 90)])  # in flight, from before the erasure

    assert everyone(store) == set()


def test_an_event_after_the_erasure_is_a_new_life(store: SqlInteractionStore) -> None:
    store.apply_events([view(MEMBER, "a", 1)])
    store.erase_member(erase())

    after = (ERASED_AT - START) // timedelta(minutes=1) + 5
    assert store.apply_events([view(MEMBER, "z", after)]) == 1

    assert stored.history(store, MEMBER, 100) == {"z": 1.0}


def test_applying_an_erasure_again_changes_nothing(
    store: SqlInteractionStore, engine: Engine
) -> None:
    store.apply_events([view(MEMBER, "a", 1), view(MEMBER, "b", 2)])
    assert store.erase_member(erase()) == 2
    # The member's new life: a link and an event after the erasure.
    after = (ERASED_AT - START) // timedelta(minutes=1) + 5
    store.link_visitors([link(minutes=after)])
    store.apply_events([view(MEMBER, "z", after), view(VISITOR, "y", after + 1)])

    assert store.erase_member(erase()) == 0  # redelivered, or met again on a replay

    assert stored.history(store, MEMBER, 100) == {"z": 1.0, "y": 1.0}
    with engine.connect() as conn:
        assert conn.execute(select(erasures.c.removed)).scalars().all() == [2]
        assert len(list(conn.execute(select(links)))) == 1
    # A second erasure (a new request) erases the new life too.
    assert store.erase_member(erase(erasure_id="erasure-2")) == 2
    assert everyone(store) == set()


def test_a_link_moves_the_visitors_history_to_the_member_once(
    store: SqlInteractionStore,
) -> None:
    store.apply_events([view(MEMBER, "a", 1), view(VISITOR, "c", 2), view(VISITOR, "d", 3)])

    assert store.link_visitors([link()]) == 1
    merged = stored.history(store, MEMBER, 100)
    assert merged == {"a": 1.0, "c": 1.0, "d": 1.0}
    assert stored.history(store, VISITOR, 100) == {}

    # The same link again (a redelivery, another request): nothing doubles.
    assert store.link_visitors([link()]) == 0
    assert stored.history(store, MEMBER, 100) == merged
    assert sorted((i.member_id, i.item_id, i.weight) for i in stored.interactions(store)) == [
        (MEMBER, "a", 1.0),
        (MEMBER, "c", 1.0),
        (MEMBER, "d", 1.0),
    ]


def test_later_events_of_a_linked_visitor_land_on_the_member(
    store: SqlInteractionStore,
) -> None:
    store.link_visitors([link()])

    store.apply_events([view(VISITOR, "e", 50), view(VISITOR, "e", 51)])
    # Redelivered after the link: the same event ids, recorded once, on the member.
    store.apply_events([view(VISITOR, "e", 50)])

    assert stored.history(store, MEMBER, 100) == {"e": 2.0}
    assert stored.history(store, VISITOR, 100) == {}


def test_the_first_link_of_a_visitor_wins(store: SqlInteractionStore) -> None:
    store.apply_events([view(VISITOR, "c", 1)])
    assert store.link_visitors([link()]) == 1

    assert store.link_visitors([link(member="carol")]) == 0
    store.apply_events([view(VISITOR, "f", 60)])

    assert stored.history(store, MEMBER, 100) == {"c": 1.0, "f": 1.0}
    assert stored.history(store, "carol", 100) == {}


def test_links_of_one_batch_apply_in_order_the_first_of_a_visitor_winning(
    store: SqlInteractionStore,
) -> None:
    store.apply_events([view(VISITOR, "c", 1), view("anon-other", "d", 2)])

    applied = store.link_visitors(
        [link(), link(member="carol"), link(), link("anon-other", "carol"), link("bob", "bob")]
    )

    assert applied == 2
    assert stored.history(store, MEMBER, 100) == {"c": 1.0}
    assert stored.history(store, "carol", 100) == {"d": 1.0}


def test_a_link_from_before_an_erasure_is_not_applied_again(
    store: SqlInteractionStore, engine: Engine
) -> None:
    store.link_visitors([link()])
    store.erase_member(erase())

    assert store.link_visitors([link()]) == 0  # met again on a replay of the log
    store.apply_events([view(VISITOR, "c", 100)])

    assert everyone(store) == set()
    with engine.connect() as conn:
        assert list(conn.execute(select(links))) == []


def test_a_link_after_the_erasure_is_applied(store: SqlInteractionStore) -> None:
    store.erase_member(erase())
    later = link(minutes=(ERASED_AT - START) // timedelta(minutes=1) + 10)

    assert store.link_visitors([later]) == 1
    assert store.apply_events([view(VISITOR, "n", 4000)]) == 1
    assert stored.history(store, MEMBER, 100) == {"n": 1.0}


def test_a_store_without_a_secret_refuses_to_erase(engine: Engine) -> None:
    store = SqlInteractionStore(engine, SETTINGS.event_weights)

    with pytest.raises(RuntimeError, match="secret"):
        store.erase_member(erase())


def test_no_file_of_an_sqlite_store_holds_an_erased_member_id(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    store = SqlInteractionStore.from_url(
        f"sqlite:///{folder / 'retrieval.db'}", SETTINGS.event_weights, SECRET
    )
    try:
        store.apply_events([view(MEMBER, f"item-{n}", n) for n in range(300)])
        store.apply_events([view(VISITOR, "c", 400), view("bob", "a", 401)])
        store.link_visitors([link()])
        assert MEMBER.encode() in b"".join(p.read_bytes() for p in folder.iterdir())

        store.erase_member(erase())

        for path in folder.iterdir():
            content = path.read_bytes()
            assert MEMBER.encode() not in content, path.name
            assert VISITOR.encode() not in content, path.name
        assert stored.history(store, "bob", 10) == {"a": 1.0}
    finally:
        store.close()


# --- through the consumer --------------------------------------------------------------


@pytest.fixture
def bus(tmp_path: Path) -> LocalLogBus:
    return LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)


def test_the_consumer_applies_links_before_the_events_of_a_batch(
    store: SqlInteractionStore, bus: LocalLogBus
) -> None:
    # One request: the link goes first on the members topic, the visitor's events on theirs.
    bus.publish(MEMBERS_TOPIC, [command_message(link())])
    bus.publish(EVENTS_TOPIC, event_records([view(VISITOR, "c", 40), view(MEMBER, "a", 41)]))
    worker = interaction_worker(bus, store, SETTINGS)

    worker.drain()

    assert stored.history(store, MEMBER, 100) == {"a": 1.0, "c": 1.0}
    assert everyone(store) == {MEMBER}
    assert worker.dead_lettered == 0
    bus.close()


def test_replaying_the_log_from_the_start_does_not_bring_an_erased_member_back(
    store: SqlInteractionStore, bus: LocalLogBus
) -> None:
    before = [view(MEMBER, "a", 1), view(VISITOR, "c", 2), view("bob", "b", 3)]
    bus.publish(EVENTS_TOPIC, event_records(before))
    bus.publish(MEMBERS_TOPIC, [command_message(link())])
    consent = Consent(MEMBER, START, {"email": False})
    bus.publish(MEMBERS_TOPIC, [command_message(consent), command_message(erase())])
    # In flight: sent before the erasure, published after it.
    bus.publish(EVENTS_TOPIC, event_records([view(MEMBER, "late", 100)]))
    new_life = (ERASED_AT - START) // timedelta(minutes=1) + 1
    bus.publish(EVENTS_TOPIC, event_records([view(MEMBER, "fresh", new_life)]))

    interaction_worker(bus, store, SETTINGS).drain()
    first = sorted((i.member_id, i.item_id) for i in stored.interactions(store))
    # A fresh consumer group reads everything again, from the start, into the same store.
    replay = RetrievalSettings(consumer_group="retrieval-replay")
    replayer = interaction_worker(bus, store, replay)
    replayer.drain()

    assert first == sorted([("bob", "b"), (MEMBER, "fresh")])
    assert sorted((i.member_id, i.item_id) for i in stored.interactions(store)) == first
    assert replayer.dead_lettered == 0
    bus.close()
