"""Ingestion: validating events and catalog items one by one and publishing the good ones."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.bus.base import CATALOG_TOPIC, EVENTS_TOPIC, IMPRESSIONS_TOPIC, Record
from services.common.bus.local_log import LocalLogBus
from services.common.events import CatalogItem, read_events
from services.common.pii import PiiScrubber
from services.ingestion.domain import BadPayload, Ingestor, TooManyEvents
from services.ingestion.settings import IngestionSettings


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[LocalLogBus]:
    bus = LocalLogBus(tmp_path / "bus", partitions=4, fsync=False)
    yield bus
    bus.close()


SECRET = b"a-test-secret-of-32-characters!!"


@pytest.fixture
def ingestor(bus: LocalLogBus) -> Ingestor:
    return Ingestor(bus, PiiScrubber(SECRET), IngestionSettings(max_batch_events=10))


def _published(bus: LocalLogBus, topic: str) -> list[Record]:
    """Everything on `topic`, read back by a fresh consumer group."""
    expected = sum(bus.end_offsets(topic).values())
    records: list[Record] = []
    deadline = time.monotonic() + 5
    with bus.consumer(f"reader-{time.monotonic_ns()}", [topic]) as consumer:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer.poll(max_records=100, timeout_s=0.1))
        records.extend(consumer.poll(max_records=100, timeout_s=0.05))
    return records


def _body(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def test_a_batch_with_one_bad_event_publishes_only_the_good_ones(
    bus: LocalLogBus, ingestor: Ingestor
) -> None:
    body = _body(
        {"event_id": "e-1", "type": "view", "member_id": "m-1", "item_id": "sku-1"},
        {"event_id": "e-bad", "type": "view", "member_id": "m-2"},  # no item
        {"type": "purchase", "member_id": 3, "item_id": "sku-2", "revenue": 10},
    )

    outcome = ingestor.publish_events(body)

    assert len(outcome.accepted) == 2
    assert outcome.accepted[0] == "e-1"
    generated = outcome.accepted[1]
    assert generated and generated != "e-1"
    assert len(outcome.rejected) == 1
    rejected = outcome.rejected[0]
    assert (rejected.index, rejected.id) == (1, "e-bad")
    assert "needs item_id or items" in rejected.reason

    records = _published(bus, EVENTS_TOPIC)
    events = {e.event_id: (r.key, e) for r in records for e in read_events(r.value)}
    assert len(records) == 2  # one per member
    assert set(events) == {"e-1", generated}
    assert events["e-1"][0] == "m-1"
    key, purchase = events[generated]
    assert key == "3"
    assert (purchase.member_id, purchase.item_id, purchase.revenue) == ("3", "sku-2", 10.0)


def test_a_single_event_body_is_accepted(bus: LocalLogBus, ingestor: Ingestor) -> None:
    body = json.dumps({"event_id": "e-9", "type": "view", "member_id": "m", "item_id": "i"})

    outcome = ingestor.publish_events(body.encode())

    assert outcome.accepted == ["e-9"]
    assert outcome.rejected == []
    assert [r.key for r in _published(bus, EVENTS_TOPIC)] == ["m"]


def test_a_batch_goes_on_the_bus_as_one_record_per_member_in_order(
    bus: LocalLogBus, ingestor: Ingestor
) -> None:
    sent = [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("a", "5")]
    body = _body(
        *({"event_id": e, "type": "view", "member_id": m, "item_id": "i"} for m, e in sent)
    )

    outcome = ingestor.publish_events(body)

    assert outcome.accepted == ["1", "2", "3", "4", "5"]
    records = _published(bus, EVENTS_TOPIC)
    by_member = {r.key: [e.event_id for e in read_events(r.value)] for r in records}
    assert len(records) == 3
    assert by_member == {"a": ["1", "3", "5"], "b": ["2"], "c": ["4"]}


def test_a_non_object_entry_is_rejected_by_index(bus: LocalLogBus, ingestor: Ingestor) -> None:
    outcome = ingestor.publish_events(_body("just a string"))

    assert outcome.accepted == []
    assert [(r.index, r.id) for r in outcome.rejected] == [(0, "")]
    assert "JSON object" in outcome.rejected[0].reason
    assert _published(bus, EVENTS_TOPIC) == []


def test_a_body_that_is_not_json_is_a_bad_payload(bus: LocalLogBus, ingestor: Ingestor) -> None:
    with pytest.raises(BadPayload, match="not valid JSON"):
        ingestor.publish_events(b"type=view&member_id=m-1")

    assert _published(bus, EVENTS_TOPIC) == []


def test_too_many_events_is_a_bad_payload(bus: LocalLogBus, ingestor: Ingestor) -> None:
    events = [{"type": "view", "member_id": "m", "item_id": f"i{n}"} for n in range(11)]

    with pytest.raises(TooManyEvents, match="11 events"):
        ingestor.publish_events(_body(*events))

    assert _published(bus, EVENTS_TOPIC) == []


def test_an_unknown_format_is_a_bad_payload(ingestor: Ingestor) -> None:
    with pytest.raises(BadPayload, match="unknown event format"):
        ingestor.publish_events(_body(), fmt="ga4-xml")


def test_upsert_items_publishes_valid_items_and_rejects_bad_ones(
    bus: LocalLogBus, ingestor: Ingestor
) -> None:
    body = json.dumps(
        {
            "items": [
                {"item_id": "sku-1", "category": "garden", "price": 9.5, "in_stock": True},
                {"item_id": "sku-2", "price": -3},
                {"item_id": 3, "category": "tools", "in_stock": False},
            ]
        }
    ).encode()

    outcome = ingestor.upsert_items(body)

    assert outcome.accepted == ["sku-1", "3"]
    assert [(r.index, r.id) for r in outcome.rejected] == [(1, "sku-2")]
    assert "price" in outcome.rejected[0].reason
    records = _published(bus, CATALOG_TOPIC)
    items = {r.key: CatalogItem.from_bytes(r.value) for r in records}
    assert len(records) == 2
    assert set(items) == {"sku-1", "3"}
    assert (items["sku-1"].category, items["sku-1"].price) == ("garden", 9.5)
    assert items["3"].in_stock is False


def test_upsert_items_accepts_a_bare_list(bus: LocalLogBus, ingestor: Ingestor) -> None:
    outcome = ingestor.upsert_items(b'[{"item_id": "a"}, {"item_id": "b"}]')

    assert outcome.accepted == ["a", "b"]
    assert sorted(r.key for r in _published(bus, CATALOG_TOPIC)) == ["a", "b"]


def test_upsert_items_rejects_bad_json(ingestor: Ingestor) -> None:
    with pytest.raises(BadPayload, match="not valid JSON"):
        ingestor.upsert_items(b"[{")


def test_emails_and_phones_never_reach_the_bus_in_clear(ingestor: Ingestor, bus: LocalLogBus):
    email, phone = "Jane.Doe@Example.com", "+44 7700 900123"
    event = {
        "event_id": "pii-1",
        "type": "view",
        "member_id": email,
        "item_id": "sku-1",
        "context": {"traits": {"email": email, "phone": phone}, "note": f"call {phone}"},
    }
    outcome = ingestor.publish_events(json.dumps(event).encode())
    assert outcome.accepted == ["pii-1"]

    (record,) = _published(bus, EVENTS_TOPIC)
    (published,) = read_events(record.value)
    token = PiiScrubber(SECRET).token(email)
    assert published.member_id == token == record.key
    assert published.context["traits"]["email"] == token
    assert published.context["traits"]["phone"] == PiiScrubber(SECRET).token(phone)
    assert published.context["note"].startswith("call pii:")
    on_disk = b"".join(p.read_bytes() for p in bus_files(bus))
    for clear in (email, email.lower(), phone, "7700 900123", "Jane.Doe"):
        assert clear.encode() not in on_disk


def bus_files(bus: LocalLogBus) -> list:
    return [p for p in bus.root.rglob("*") if p.is_file()]


def test_impressions_go_on_their_own_topic_and_the_rest_on_the_events_topic(
    bus: LocalLogBus, ingestor: Ingestor
) -> None:
    body = _body(
        {"event_id": "v-1", "type": "view", "member_id": "m-1", "item_id": "sku-1"},
        {
            "event_id": "imp-1",
            "type": "impression",
            "member_id": "m-1",
            "recommendation_id": "r-1",
            "items": [{"item_id": "sku-1"}, {"item_id": "sku-2"}],
            "context": {"placement": "home", "variant": "control"},
        },
    )

    outcome = ingestor.publish_events(body)

    assert outcome.accepted == ["v-1", "imp-1"]
    shown = [e for r in _published(bus, IMPRESSIONS_TOPIC) for e in read_events(r.value)]
    done = [e for r in _published(bus, EVENTS_TOPIC) for e in read_events(r.value)]
    assert [e.event_id for e in shown] == ["imp-1"]
    assert [e.event_id for e in done] == ["v-1"]
    assert shown[0].context["variant"] == "control"
