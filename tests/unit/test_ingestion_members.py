"""Ingestion's member commands: the links and consent shops' formats carry, and erasures
(the domain and the gRPC EraseMember), published on the members topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.bus.base import EVENTS_TOPIC, MEMBERS_TOPIC, BusError, Message
from services.common.bus.local_log import LocalLogBus
from services.common.events import read_events
from services.common.members import Consent, Erase, Link, MemberCommand, read_command
from services.common.pii import PiiScrubber
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion.domain import BadMemberId, Ingestor
from services.ingestion.servicer import IngestionServicer
from services.ingestion.settings import IngestionSettings

SECRET = b"a-test-secret-of-32-characters!!"
NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


class RecordingBus(LocalLogBus):
    """The local log, remembering the order in which topics were published to."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, partitions=2, fsync=False)
        self.order: list[str] = []

    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if messages:
            self.order.append(topic)
        super().publish(topic, messages)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[RecordingBus]:
    bus = RecordingBus(tmp_path / "bus")
    yield bus
    bus.close()


@pytest.fixture
def ingestor(bus: RecordingBus) -> Ingestor:
    return Ingestor(bus, PiiScrubber(SECRET), IngestionSettings(), clock=lambda: NOW)


def commands(bus: LocalLogBus) -> list[tuple[str, MemberCommand]]:
    """(key, command) of everything on the members topic."""
    records = []
    with bus.consumer(f"reader-{uuid.uuid4().hex}", [MEMBERS_TOPIC]) as consumer:
        while batch := consumer.poll(max_records=100, timeout_s=0.05):
            records.extend(batch)
    return [(record.key, read_command(record.value)) for record in records]


def events_on(bus: LocalLogBus) -> list[Any]:
    with bus.consumer(f"reader-{uuid.uuid4().hex}", [EVENTS_TOPIC]) as consumer:
        records = []
        while batch := consumer.poll(max_records=100, timeout_s=0.05):
            records.extend(batch)
    return [event for record in records for event in read_events(record.value)]


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


SEGMENT_TIME = "2026-05-04T10:00:00Z"
AT = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


# --- links -----------------------------------------------------------------------------


def test_a_segment_identify_links_the_visitor_and_is_still_only_ignored(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    identify = {
        "type": "identify",
        "userId": "m-42",
        "anonymousId": "anon-7",
        "traits": {"plan": "gold"},
        "timestamp": SEGMENT_TIME,
    }

    outcome = ingestor.publish_events(body(identify), "segment")

    assert (outcome.accepted, outcome.rejected, outcome.ignored) == ([], [], 1)
    assert commands(bus) == [("m-42", Link("anon-7", "m-42", AT, "segment"))]


def test_a_segment_alias_links_the_previous_id(bus: RecordingBus, ingestor: Ingestor) -> None:
    alias = {"type": "alias", "previousId": "old-visitor", "userId": "m-42"}

    outcome = ingestor.publish_events(body(alias), "segment")

    assert outcome.ignored == 1 and outcome.rejected == []
    # Undated: the link is dated by the fleet's clock.
    assert commands(bus) == [("m-42", Link("old-visitor", "m-42", NOW, "segment"))]


def test_a_track_with_both_ids_links_once_per_request_before_its_events(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    def viewed(sku: str) -> dict[str, Any]:
        return {
            "type": "track",
            "event": "Product Viewed",
            "userId": "m-42",
            "anonymousId": "anon-7",
            "properties": {"product_id": sku},
            "timestamp": SEGMENT_TIME,
        }

    batch = {"batch": [viewed("sku-1"), viewed("sku-2"), {**viewed("sku-3"), "messageId": "x"}]}

    outcome = ingestor.publish_events(body(batch), "segment")

    assert len(outcome.accepted) == 3
    assert commands(bus) == [("m-42", Link("anon-7", "m-42", AT, "segment"))]
    assert {e.member_id for e in events_on(bus)} == {"m-42"}
    # Consumers meet the link before the events it relabels.
    assert bus.order == [MEMBERS_TOPIC, EVENTS_TOPIC]


def test_a_ga4_body_with_client_id_and_user_id_links_them(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    measurement = {
        "client_id": "1197596843.1673515424",
        "user_id": "m-42",
        "events": [
            {"name": "page_view", "params": {}},
            {
                "name": "view_item",
                "params": {"items": [{"item_id": "sku-1"}]},
                "timestamp_micros": int(AT.timestamp() * 1_000_000),
            },
        ],
    }

    outcome = ingestor.publish_events(body(measurement), "ga4")

    assert (len(outcome.accepted), outcome.ignored) == (1, 1)
    # Each event dates its own link; one link per request all the same (the first date).
    assert commands(bus) == [("m-42", Link("1197596843.1673515424", "m-42", NOW, "ga4"))]


def test_a_retail_event_with_visitor_and_user_links_them(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    event = {
        "eventType": "home-page-view",
        "visitorId": "visitor-1",
        "userInfo": {"userId": "m-42"},
        "eventTime": "2026-05-04T09:30:00Z",
    }

    outcome = ingestor.publish_events(body(event), "google_retail")

    assert outcome.ignored == 1
    at = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
    assert commands(bus) == [("m-42", Link("visitor-1", "m-42", at, "google_retail"))]


def test_links_use_the_same_tokens_as_the_events_for_emails(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    track = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "Jane.Doe@Example.com",
        "anonymousId": "anon-7",
        "properties": {"product_id": "sku-1"},
        "timestamp": SEGMENT_TIME,
    }

    ingestor.publish_events(body(track), "segment")

    token = PiiScrubber(SECRET).token("jane.doe@example.com")
    [(key, command)] = commands(bus)
    assert key == token
    assert command == Link("anon-7", token, AT, "segment")
    assert [e.member_id for e in events_on(bus)] == [token]


def test_ids_no_event_could_carry_make_no_link_and_no_rejection(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    messages = [
        {"type": "identify", "userId": "m-1", "anonymousId": "x" * 129},
        {"type": "identify", "userId": "m-2", "anonymousId": "bad\u0000id"},
        {"type": "identify", "userId": "m\n3", "anonymousId": "anon-3"},
        {"type": "identify", "userId": "m-4", "anonymousId": "m-4"},
    ]

    outcome = ingestor.publish_events(body(messages), "segment")

    assert (outcome.rejected, outcome.ignored) == ([], 4)
    assert commands(bus) == []


def test_a_link_dated_outside_the_accepted_bounds_is_dated_now(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    future = (NOW + timedelta(days=3)).isoformat()
    identify = {"type": "identify", "userId": "m-1", "anonymousId": "a-1", "timestamp": future}

    ingestor.publish_events(body(identify), "segment")

    assert commands(bus) == [("m-1", Link("a-1", "m-1", NOW, "segment"))]


# --- consent ---------------------------------------------------------------------------


def test_segment_consent_preferences_become_a_consent_change(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    identify = {
        "type": "identify",
        "userId": "m-42",
        "timestamp": SEGMENT_TIME,
        "context": {
            "consent": {
                "categoryPreferences": {
                    "Personalization": True,
                    "Email Marketing": False,
                    "sms": True,
                    "Push-Notifications": False,
                    "Advertising": True,  # no recofleet counterpart
                    "onsite": "yes",  # not a yes/no
                }
            }
        },
    }

    outcome = ingestor.publish_events(body(identify), "segment")

    assert outcome.rejected == []
    changes = {"personalization": True, "email": False, "sms": True, "push": False}
    assert commands(bus) == [("m-42", Consent("m-42", AT, changes))]


def test_segment_consent_of_an_anonymous_visitor_is_theirs(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    page = {
        "type": "page",
        "anonymousId": "anon-7",
        "context": {"consent": {"categoryPreferences": {"Email": True, "email marketing": False}}},
    }

    ingestor.publish_events(body(page), "segment")

    # Two categories of one key disagree: the denial wins.
    assert commands(bus) == [("anon-7", Consent("anon-7", NOW, {"email": False}))]


def test_ga4_consent_maps_ad_personalization(bus: RecordingBus, ingestor: Ingestor) -> None:
    measurement = {
        "client_id": "c-1",
        "user_id": "m-42",
        "consent": {"ad_user_data": "GRANTED", "ad_personalization": "DENIED"},
        "events": [{"name": "page_view"}, {"name": "page_view", "params": {"page": 2}}],
    }

    ingestor.publish_events(body(measurement), "ga4")

    assert commands(bus) == [
        ("m-42", Link("c-1", "m-42", NOW, "ga4")),
        ("m-42", Consent("m-42", NOW, {"personalization": False})),
    ]


def test_ga4_consent_without_ad_personalization_changes_nothing(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    measurement = {
        "client_id": "c-1",
        "consent": {"ad_user_data": "DENIED"},
        "events": [{"name": "page_view"}],
    }

    ingestor.publish_events(body(measurement), "ga4")

    assert commands(bus) == []


# --- erasure ---------------------------------------------------------------------------


def test_erase_member_publishes_one_erasure_dated_by_the_fleet_clock(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    erased = ingestor.erase_member("m-42")

    assert uuid.UUID(erased.erasure_id).version == 4
    assert erased == Erase("m-42", erased.erasure_id, NOW)
    assert commands(bus) == [("m-42", erased)]
    assert ingestor.erase_member("m-42").erasure_id != erased.erasure_id


def test_a_member_known_by_email_is_erased_under_its_token(
    bus: RecordingBus, ingestor: Ingestor
) -> None:
    ingestor.publish_events(
        body(
            {
                "type": "view",
                "member_id": "Jane.Doe@Example.com",
                "item_id": "sku-1",
                "timestamp": SEGMENT_TIME,
            }
        )
    )

    erased = ingestor.erase_member("jane.doe@example.com")

    [event] = events_on(bus)
    assert erased.member_id == event.member_id == PiiScrubber(SECRET).token("jane.doe@example.com")


@pytest.mark.parametrize(
    ("member_id", "reason"),
    [
        ("", "is required"),
        ("m" * 129, "at most 128 characters"),
        ("m" * 100_000, "at most 128 characters"),
        ("m-\x001", "control characters"),
        ("m-\n1", "control characters"),
    ],
)
def test_erase_member_refuses_an_id_no_event_could_carry(
    bus: RecordingBus, ingestor: Ingestor, member_id: str, reason: str
) -> None:
    with pytest.raises(BadMemberId, match=reason):
        ingestor.erase_member(member_id)

    assert commands(bus) == []


# --- over gRPC -------------------------------------------------------------------------


class DownBus(LocalLogBus):
    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        raise BusError("the log is full")


async def _serve(ingestor: Ingestor) -> AsyncIterator[ingestion_pb2_grpc.IngestionServiceStub]:
    server = grpc.aio.server()
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(IngestionServicer(ingestor), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ingestion_pb2_grpc.IngestionServiceStub(channel)
    finally:
        await server.stop(None)


@pytest.fixture
async def stub(ingestor: Ingestor) -> AsyncIterator[ingestion_pb2_grpc.IngestionServiceStub]:
    async for client in _serve(ingestor):
        yield client


async def test_erase_member_over_grpc_answers_the_erasure(
    stub: ingestion_pb2_grpc.IngestionServiceStub, bus: RecordingBus
) -> None:
    answer = await stub.EraseMember(ingestion_pb2.EraseMemberRequest(member_id="m-42"))

    assert answer.requested_at.ToDatetime(tzinfo=UTC) == NOW
    assert commands(bus) == [("m-42", Erase("m-42", answer.erasure_id, NOW))]


async def test_erase_member_over_grpc_refuses_a_bad_id(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EraseMember(ingestion_pb2.EraseMemberRequest(member_id=""))

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "member_id" in (caught.value.details() or "")


async def test_erase_member_over_grpc_when_the_bus_is_down_is_unavailable(
    tmp_path: Path,
) -> None:
    down = DownBus(tmp_path / "down", partitions=1, fsync=False)
    ingestor = Ingestor(down, PiiScrubber(SECRET), IngestionSettings(), clock=lambda: NOW)
    try:
        async for client in _serve(ingestor):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.EraseMember(ingestion_pb2.EraseMemberRequest(member_id="m-42"))
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        down.close()
