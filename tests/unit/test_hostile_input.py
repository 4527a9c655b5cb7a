"""Bodies an attacker (or a broken client) sends: each gets a clear answer, nothing leaks.

Every case here was found by probing a running fleet by hand; each answer is what the
client is told (a rejection with its reason, or a bad payload for the whole body), and the
bus holds nothing it should not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.bus.base import EVENTS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.pii import PiiScrubber
from services.ingestion.domain import BadPayload, Ingestor
from services.ingestion.settings import IngestionSettings
from tests.unit.test_ingestion import _published

SECRET = b"a-test-secret-of-32-characters!!"
# The ingestor's clock: now (events sent without a timestamp are dated by the real clock, and
# must be within its bounds), to the second.
NOW = datetime.now(UTC).replace(microsecond=0)
TWO_HOURS_AHEAD = (NOW + timedelta(hours=2)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[LocalLogBus]:
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    yield bus
    bus.close()


@pytest.fixture
def ingestor(bus: LocalLogBus) -> Ingestor:
    return Ingestor(bus, PiiScrubber(SECRET), IngestionSettings(), clock=lambda: NOW)


def _bus_bytes(bus: LocalLogBus) -> bytes:
    return b"".join(r.key.encode() + r.value for r in _published(bus, EVENTS_TOPIC))


VIEW = '{"type":"view","member_id":"m-1","item_id":"85123A"'
# +971 50 123 4567 in Arabic-Indic digits (U+0660...U+0669).
ARABIC_PHONE = "+" + " ".join(
    "".join(chr(0x660 + int(d)) for d in group) for group in ("971", "50", "123", "4567")
)


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        (
            '{"type":"view","member_id":"grace.member\\u0040example.com","item_id":"85123A"}',
            "grace.member@example.com",
        ),
        (
            '{"type":"view","member_id":"\\u0067race\\u002eme\\u0040example\\u002Ecom",'
            '"item_id":"85123A"}',
            "grace.me@example.com",
        ),
        (VIEW + ',"context":{"em\\u0061il":"grace-secret-value"}}', "grace-secret-value"),
        (VIEW + ',"context":{"note":"mail grace\\u0040example.com"}}', "grace@example.com"),
        (VIEW + ',"context":{"grace\\u0040example.com":1}}', "grace@example.com"),
        (
            '{"type":"search","member_id":"m-1","query":"call +44 20 7946\\u00200958"}',
            "+44 20 7946 0958",
        ),
        (VIEW + ',"context":{"n":"\\u0035\\u0035\\u0035-123-4567"}}', "555-123-4567"),
        # Arabic-Indic digits are digits to the scrubber's patterns.
        (VIEW + ',"context":{"n":"' + ARABIC_PHONE + '"}}', ARABIC_PHONE),
        (VIEW + ',"context":{"n":"abc-555-123-4567"}}', "555-123-4567"),
    ],
)
def test_escaped_or_disguised_contact_data_never_reaches_the_bus(
    ingestor: Ingestor, bus: LocalLogBus, body: str, secret: str
) -> None:
    outcome = ingestor.publish_events(body.encode())

    assert len(outcome.accepted) == 1, outcome.rejected
    published = _bus_bytes(bus)
    assert secret.encode() not in published
    assert b"pii:" in published


def test_escaped_traits_in_segment_are_scrubbed(ingestor: Ingestor, bus: LocalLogBus) -> None:
    body = (
        '{"type":"track","event":"Product Viewed","userId":"u-1","messageId":"x-1",'
        '"properties":{"product_id":"85123A"},'
        '"context":{"traits":{"em\\u0061il":"jane\\u0040example.com","phone":"+1 555 0100 234"}}}'
    )
    outcome = ingestor.publish_events(body.encode(), "segment")

    assert outcome.accepted == ["seg-x-1"]
    published = _bus_bytes(bus)
    assert b"jane@example.com" not in published
    assert b"555 0100 234" not in published


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000,
        b'{"events":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"a":' * 300 + b"1" + b"}" * 300,
    ],
)
@pytest.mark.parametrize("fmt", ["native", "segment", "ga4", "google_retail"])
def test_deeply_nested_bodies_are_bad_payloads(ingestor: Ingestor, body: bytes, fmt: str) -> None:
    with pytest.raises(BadPayload, match="deeper than"):
        ingestor.publish_events(body, fmt)


def test_a_deep_context_rejects_that_event_only(ingestor: Ingestor) -> None:
    deep = {"a": []}
    for _ in range(20):
        deep = {"a": [deep]}
    body = {
        "events": [
            {"type": "view", "member_id": "m-1", "item_id": "1", "context": deep},
            {"type": "view", "member_id": "m-2", "item_id": "2"},
        ]
    }
    outcome = ingestor.publish_events(json.dumps(body).encode())

    assert len(outcome.accepted) == 1
    assert outcome.rejected[0].index == 0
    assert "context: nests objects and lists deeper than 16 levels" in outcome.rejected[0].reason


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        ("0001-01-01T00:00:00+14:00", "out of range once in UTC"),
        ("9999-12-31T23:59:59-01:00", "out of range once in UTC"),
        ("9999-12-31T23:59:59Z", "is in the future"),
        (TWO_HOURS_AHEAD, "is in the future"),
        ("1969-12-31T23:59:59Z", "is before 1970-01-01"),
        ("0001-01-01T00:00:00Z", "is before 1970-01-01"),
    ],
)
def test_timestamps_out_of_bounds_are_rejected_with_a_reason(
    ingestor: Ingestor, timestamp: str, reason: str
) -> None:
    body = json.dumps({"type": "view", "member_id": "m", "item_id": "1", "timestamp": timestamp})
    outcome = ingestor.publish_events(body.encode())

    assert outcome.accepted == []
    assert reason in outcome.rejected[0].reason
    assert outcome.rejected[0].reason.startswith("timestamp")


def test_the_future_skew_is_a_setting(bus: LocalLogBus) -> None:
    settings = IngestionSettings(max_future_skew_s=3 * 3600)
    ingestor = Ingestor(bus, PiiScrubber(SECRET), settings, clock=lambda: NOW)
    body = json.dumps(
        {"type": "view", "member_id": "m", "item_id": "1", "timestamp": TWO_HOURS_AHEAD}
    ).encode()

    assert len(ingestor.publish_events(body).accepted) == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('"price": Infinity', "NaN and Infinity are not JSON numbers"),
        ('"price": NaN', "NaN and Infinity are not JSON numbers"),
        ('"price": 1e400', "number is too large"),
        ('"price": -1', "greater than or equal to 0"),
        ('"price": 2e9', "less than or equal to 1000000000"),
        ('"price": 1e8, "quantity": 100', "price times quantity exceeds"),
    ],
)
def test_amounts_that_are_not_finite_or_out_of_range_are_refused(
    ingestor: Ingestor, bus: LocalLogBus, line: str, reason: str
) -> None:
    body = (
        '{"events": [{"type": "purchase", "member_id": "m", "items": [{"item_id": "1", '
        + line
        + '}]}, {"type": "view", "member_id": "m", "item_id": "2"}]}'
    )
    try:
        outcome = ingestor.publish_events(body.encode())
    except BadPayload as exc:
        assert reason in str(exc)  # not JSON at all: the whole body is refused
        assert _published(bus, EVENTS_TOPIC) == []
        return
    assert len(outcome.accepted) == 1
    assert reason in outcome.rejected[0].reason


@pytest.mark.parametrize("revenue", ["-5", "1e12", "NaN"])
def test_revenue_must_be_a_finite_amount(ingestor: Ingestor, revenue: str) -> None:
    body = '{"type":"purchase","member_id":"m","item_id":"1","revenue":' + revenue + "}"
    try:
        outcome = ingestor.publish_events(body.encode())
    except BadPayload:
        return
    assert outcome.accepted == []
    assert outcome.rejected[0].reason.startswith("revenue")


def test_many_lines_may_not_add_up_to_an_overflow(ingestor: Ingestor) -> None:
    lines = [{"item_id": str(n), "price": 1e9, "quantity": 1} for n in range(5)]
    body = json.dumps({"type": "purchase", "member_id": "m", "items": lines})
    outcome = ingestor.publish_events(body.encode())

    assert outcome.accepted == []
    assert "add up to more than" in outcome.rejected[0].reason


def test_a_repeated_event_id_in_one_request_is_reported(
    ingestor: Ingestor, bus: LocalLogBus
) -> None:
    body = json.dumps(
        {
            "events": [
                {"event_id": "d-1", "type": "view", "member_id": "m", "item_id": "1"},
                {"event_id": "d-2", "type": "view", "member_id": "m", "item_id": "2"},
                {"event_id": "d-1", "type": "view", "member_id": "m", "item_id": "3"},
            ]
        }
    )
    outcome = ingestor.publish_events(body.encode())

    assert outcome.accepted == ["d-1", "d-2"]
    [rejected] = outcome.rejected
    assert (rejected.index, rejected.id) == (2, "d-1")
    assert "already used by event 0" in rejected.reason
    assert b'"item_id":"3"' not in _bus_bytes(bus)


def test_repeated_segment_message_ids_are_reported(ingestor: Ingestor) -> None:
    message = {"type": "track", "event": "Product Viewed", "userId": "u", "messageId": "m-1"}
    body = {"batch": [message | {"properties": {"product_id": p}} for p in ("1", "2")]}
    outcome = ingestor.publish_events(json.dumps(body).encode(), "segment")

    assert outcome.accepted == ["seg-m-1"]
    assert outcome.rejected[0].index == 1


@pytest.mark.parametrize(
    "member_id", ["a\\u0000b", "a\\nb", "a\\u007fb"], ids=["nul", "newline", "delete"]
)
def test_ids_with_control_characters_are_rejected(ingestor: Ingestor, member_id: str) -> None:
    body = '{"type":"view","member_id":"' + member_id + '","item_id":"1"}'
    outcome = ingestor.publish_events(body.encode())

    assert outcome.accepted == []
    assert outcome.rejected[0].reason == "member_id: must not contain control characters"


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"view","member_id":"\\ud800","item_id":"1"}',
        '{"type":"view","member_id":"é","item_id":"1"}'.encode("utf-16"),
        b'{"type":"view","member_id":"\xff","item_id":"1"}',
        b'{"type":"view","member_id":"m","item_id":"1","context":{"n":1' + b"0" * 5000 + b"}}",
    ],
    ids=["lone-surrogate", "utf-16", "invalid-utf-8", "huge-integer"],
)
def test_bodies_that_are_not_strict_utf8_json_are_bad_payloads(
    ingestor: Ingestor, bus: LocalLogBus, body: bytes
) -> None:
    with pytest.raises(BadPayload, match="JSON"):
        ingestor.publish_events(body)
    assert _published(bus, EVENTS_TOPIC) == []


def test_a_byte_order_mark_is_tolerated(ingestor: Ingestor) -> None:
    body = b"\xef\xbb\xbf" + b'{"type":"view","member_id":"m","item_id":"1"}'
    assert len(ingestor.publish_events(body).accepted) == 1
