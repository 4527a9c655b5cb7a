"""The native event: what shops may send and what every service then relies on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.common.events import (
    RECORD_TARGET_BYTES,
    AnyEvent,
    Event,
    EventItem,
    EventType,
    WireEvent,
    WireItem,
    describe_error,
    event_records,
    parse_event,
    read_events,
    split_batch,
)


def _reason(raw: object) -> str:
    with pytest.raises(ValidationError) as caught:
        parse_event(raw)
    return describe_error(caught.value)


def test_a_full_native_event_parses_with_every_field() -> None:
    event = parse_event(
        {
            "event_id": "e-1",
            "type": "purchase",
            "member_id": "m-42",
            "session_id": "s-1",
            "items": [{"item_id": "sku-1", "quantity": 2, "price": 9.5, "category": "garden"}],
            "order_id": "o-9",
            "revenue": 19.0,
            "currency": "EUR",
            "recommendation_id": "r-1",
            "timestamp": "2026-11-22T10:00:00Z",
            "context": {"page": "cart"},
        }
    )

    assert event.event_id == "e-1"
    assert event.type is EventType.PURCHASE
    assert event.member_id == "m-42"
    assert event.order_id == "o-9"
    assert event.currency == "EUR"
    assert event.timestamp == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert [(li.item_id, li.quantity, li.price, li.category) for li in event.lines()] == [
        ("sku-1", 2, 9.5, "garden")
    ]
    assert event.context == {"page": "cart"}


def test_a_view_with_only_item_id_is_one_line_of_quantity_one() -> None:
    event = parse_event({"type": "view", "member_id": "m-1", "item_id": "sku-9"})

    assert [(li.item_id, li.quantity) for li in event.lines()] == [("sku-9", 1)]


def test_numeric_member_and_item_ids_become_strings() -> None:
    event = parse_event({"type": "view", "member_id": 12345, "item_id": 777})

    assert event.member_id == "12345"
    assert event.item_id == "777"


def test_a_view_without_item_is_rejected_with_a_readable_reason() -> None:
    reason = _reason({"type": "view", "member_id": "m-1"})

    assert "'view' event needs item_id or items" in reason
    assert "Value error" not in reason


def test_a_missing_member_is_named_in_the_reason() -> None:
    reason = _reason({"type": "view", "item_id": "sku-1"})

    assert reason.startswith("member_id:")
    assert "required" in reason.lower()


def test_a_search_needs_a_query() -> None:
    assert "'search' event needs a query" in _reason({"type": "search", "member_id": "m-1"})
    event = parse_event({"type": "search", "member_id": "m-1", "query": "lamp"})
    assert event.query == "lamp"
    assert event.lines() == []


def test_an_unknown_type_is_rejected() -> None:
    reason = _reason({"type": "teleport", "member_id": "m-1", "item_id": "sku-1"})

    assert reason.startswith("type:")
    assert "purchase" in reason  # the reason lists what is allowed


def test_unknown_fields_are_rejected() -> None:
    reason = _reason({"type": "view", "member_id": "m-1", "item_id": "x", "colour": "red"})

    assert "colour" in reason


def test_a_non_object_is_rejected() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        parse_event(["view"])


def test_naive_timestamps_are_read_as_utc() -> None:
    event = parse_event(
        {"type": "view", "member_id": "m-1", "item_id": "x", "timestamp": "2026-01-02T03:04:05"}
    )

    assert event.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert event.timestamp.utcoffset() is not None


def test_an_offset_timestamp_keeps_its_instant() -> None:
    event = parse_event(
        {
            "type": "view",
            "member_id": "m-1",
            "item_id": "x",
            "timestamp": "2026-01-02T05:04:05+02:00",
        }
    )

    assert event.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # Stored as UTC: SQLite keeps no offset, so a local wall clock would shift the instant.
    assert event.timestamp.utcoffset() == timedelta(0)


def test_an_event_without_id_gets_a_fresh_unique_one() -> None:
    raw = {"type": "view", "member_id": "m-1", "item_id": "x"}

    ids = {parse_event(dict(raw)).event_id for _ in range(50)}

    assert len(ids) == 50
    assert all(ids)


def test_the_event_survives_the_bus_round_trip() -> None:
    event = parse_event({"type": "add_to_cart", "member_id": 7, "item_id": "x"})

    assert Event.from_bytes(event.to_bytes()) == event


BUS_EVENTS = [
    {
        "event_id": "e-1",
        "type": "purchase",
        "member_id": "m-42",
        "session_id": "s-1",
        "items": [
            {"item_id": "sku-1", "quantity": 2, "price": 9.5, "category": "garden"},
            {"item_id": "sku-2"},
        ],
        "order_id": "o-9",
        "currency": "EUR",
        "recommendation_id": "r-1",
        "timestamp": "2026-11-22T10:00:00+02:00",
        "context": {"page": "cart", "ab": [1, 2]},
    },
    {"type": "view", "member_id": 7, "item_id": 12, "timestamp": "2026-11-22T10:00:00"},
    {"type": "refund", "member_id": "m-1", "order_id": "o-1", "revenue": 4.25},
    {"type": "search", "member_id": "m-1", "query": "garden lamp"},
    {"type": "rate", "member_id": "m-1", "item_id": "a", "rating": 4.5},
]


def _facts(event: AnyEvent) -> dict[str, object]:
    """Everything a consumer can read off an event, whichever type carries it."""
    fields = {name: getattr(event, name) for name in Event.model_fields if name != "items"}
    lines = [(i.item_id, i.quantity, i.price, i.category) for i in event.lines()]
    return fields | {"lines": lines, "order_value": event.order_value()}


@pytest.mark.parametrize("raw", BUS_EVENTS, ids=[str(e["type"]) for e in BUS_EVENTS])
def test_consumers_read_off_the_bus_what_ingestion_published(raw: dict[str, object]) -> None:
    event = parse_event(raw)

    (record,) = event_records([event])
    (read,) = read_events(record.value)

    # The fast reader, not the fallback, handles what ingestion publishes.
    assert isinstance(read, WireEvent)
    assert _facts(read) == _facts(event)
    assert read.timestamp.tzinfo is UTC


def test_the_bus_reader_knows_every_field_of_the_event() -> None:
    assert sorted(WireEvent.__struct_fields__) == sorted(Event.model_fields)
    assert sorted(WireItem.__struct_fields__) == sorted(EventItem.model_fields)


def test_a_record_in_another_form_is_read_by_the_event_model() -> None:
    # e.g. from a producer that writes numeric ids and naive times
    (read,) = read_events(
        b'{"type": "view", "member_id": 7, "item_id": 8, "timestamp": "2026-01-02"}'
    )

    assert isinstance(read, Event)
    assert (read.member_id, read.item_id) == ("7", "8")
    assert read.timestamp == datetime(2026, 1, 2, tzinfo=UTC)


def test_an_unreadable_record_says_why() -> None:
    with pytest.raises(ValidationError) as caught:
        read_events(b'{"type": "view", "item_id": "a", "timestamp": "2026-01-02T00:00:00Z"}')

    assert describe_error(caught.value) == "member_id: Field required"


def test_an_unreadable_event_in_a_record_is_named_by_its_place() -> None:
    good = parse_event({"type": "view", "member_id": "m", "item_id": "a"}).to_bytes()
    bad = b'{"type": "view", "member_id": "m", "timestamp": "2026-01-02T00:00:00Z"}'

    with pytest.raises(ValidationError) as caught:
        read_events(b"[" + good + b"," + bad + b"]")

    assert describe_error(caught.value) == "1: a 'view' event needs item_id or items"


def test_records_carry_one_members_events_in_order_and_stay_small() -> None:
    big = {"note": "x" * 100_000}
    events = [
        parse_event(
            {
                "event_id": f"e{n}",
                "type": "view",
                "member_id": member,
                "item_id": "a",
                "context": big if member == "heavy" else {},
            }
        )
        for n, member in enumerate(["m", "heavy", "m", "heavy", "heavy", "heavy", "m"])
    ]

    records = event_records(events)

    read = [(r.key, [e.event_id for e in read_events(r.value)]) for r in records]
    assert read == [
        ("m", ["e0", "e2", "e6"]),
        ("heavy", ["e1", "e3"]),
        ("heavy", ["e4", "e5"]),
    ]
    assert all(len(r.value) <= RECORD_TARGET_BYTES for r in records)


def test_order_value_is_the_stated_revenue() -> None:
    event = parse_event(
        {
            "type": "purchase",
            "member_id": "m-1",
            "items": [{"item_id": "a", "price": 5.0, "quantity": 3}],
            "revenue": 12.0,
        }
    )

    assert event.order_value() == 12.0


def test_order_value_falls_back_to_the_sum_of_lines() -> None:
    event = parse_event(
        {
            "type": "purchase",
            "member_id": "m-1",
            "items": [
                {"item_id": "a", "price": 2.5, "quantity": 3},
                {"item_id": "b", "price": 0.1, "quantity": 1},
                {"item_id": "c"},  # no price: counts for nothing
            ],
        }
    )

    assert event.order_value() == 7.6


def test_negative_prices_are_rejected() -> None:
    reason = _reason(
        {"type": "purchase", "member_id": "m-1", "items": [{"item_id": "a", "price": -1}]}
    )

    assert "items.0.price" in reason


def test_split_batch_of_a_single_event() -> None:
    raw = {"type": "view", "member_id": "m-1", "item_id": "x"}

    assert split_batch(json.dumps(raw).encode()) == [raw]


def test_split_batch_of_a_batch_keeps_order_and_bad_entries() -> None:
    events = [{"type": "view", "member_id": "m-1", "item_id": "x"}, 42, {"type": "nope"}]

    assert split_batch(json.dumps({"events": events}).encode()) == events


def test_split_batch_rejects_bad_json_and_non_list_events() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        split_batch(b"{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        split_batch(b"\xff\xfe")
    with pytest.raises(ValueError, match="must be a list"):
        split_batch(b'{"events": {"type": "view"}}')


def test_split_batch_takes_a_bare_list_and_other_keys() -> None:
    assert split_batch(b'[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]
    assert split_batch(b'{"items": [{"item_id": "x"}]}', "items") == [{"item_id": "x"}]
