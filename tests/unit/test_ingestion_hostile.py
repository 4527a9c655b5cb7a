"""What an outside audit sent a running gateway, and what the client is told now.

The gateway app is the real one, in front of the real ingestion servicer over gRPC in this
process, onto a bus in memory: each answer is the HTTP status and message a client gets,
and the bus holds only what it should. Four defects, one section each:
1. `NaN`, `Infinity` and `1e400` got in (member "NaN", item "inf") through the fast path;
2. a body of millions of `{}` answered 503 after seconds of work instead of 413 at once;
3. JSON lines were split at U+2028 (and the like) inside a string value;
4. a slow ingestion answered "retry" and published anyway, so a retry counted twice.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from services.common.bus import EVENTS_TOPIC
from services.common.bus.base import Message
from services.common.events import Event, EventItem, read_events
from services.common.grpc_server import MESSAGE_OPTIONS
from services.common.pii import PiiScrubber
from services.gen.recofleet.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.ingestion import domain, formats
from services.ingestion.domain import BadPayload, Ingestor, TooLate, TooManyEvents
from services.ingestion.servicer import IngestionServicer
from services.ingestion.settings import IngestionSettings
from tests.unit.test_gateway_http import WRITE_KEY, Gateway, assert_error, basic, settings

SECRET = b"a-test-secret-of-32-characters!!"


class MemoryBus:
    """The edge of this unit: keeps what is published, by topic."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Message]] = []

    def publish(self, topic: str, messages: list[Message]) -> None:
        self.published.extend((topic, message) for message in messages)

    def events(self) -> list[Any]:
        return [
            event
            for topic, message in self.published
            if topic == EVENTS_TOPIC
            for event in read_events(message.value)
        ]


class WatchedIngestor(Ingestor):
    """An ingestor that says when a request's work is over, published or not."""

    def __init__(self, bus: MemoryBus, clock: Callable[[], datetime], limit: int) -> None:
        super().__init__(
            bus,  # type: ignore[arg-type]
            PiiScrubber(SECRET),
            IngestionSettings(max_batch_events=limit),
            clock=clock,
        )
        self.finished = threading.Event()

    def publish_events(self, *args: Any, **kwargs: Any) -> domain.Outcome:
        try:
            return super().publish_events(*args, **kwargs)
        finally:
            self.finished.set()


class SlowClock:
    """The fleet's clock, which takes `delay` seconds to answer while `delay` is set: the
    ingestor asks it while validating, before publishing, so a request is slow there."""

    def __init__(self) -> None:
        self.delay = 0.0

    def __call__(self) -> datetime:
        time.sleep(self.delay)
        return datetime.now(UTC)


class Fleet:
    """The gateway app before ingestion's servicer on a gRPC server in this process."""

    def __init__(self, limit: int, **gateway: Any) -> None:
        self.bus = MemoryBus()
        self.clock = SlowClock()
        self.ingestor = WatchedIngestor(self.bus, self.clock, limit)
        self.gateway = Gateway(settings(**gateway))

    async def __aenter__(self) -> Fleet:
        self.server = grpc.aio.server(options=MESSAGE_OPTIONS)
        servicer = IngestionServicer(self.ingestor)
        ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=MESSAGE_OPTIONS)
        self.stub = ingestion_pb2_grpc.IngestionServiceStub(self.channel)
        self.gateway.clients.ingestion = self.stub  # type: ignore[assignment]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.http.aclose()
        await self.channel.close()
        await self.server.stop(None)

    async def post(self, body: bytes, fmt: str = "native", **headers: str) -> Any:
        return await self.gateway.http.post(
            f"/v1/events?format={fmt}", content=body, headers=headers
        )


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(limit=5000, max_body_bytes=5_000_000) as running:
        yield running


# --- 1. NaN, Infinity and numbers too large for a float -----------------------------------

NOT_JSON = "NaN and Infinity are not JSON numbers"
TOO_LARGE = "a number is too large"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"type":"view","member_id":NaN,"item_id":Infinity}', NOT_JSON),
        (b'{"type":"view","member_id":"m-1","item_id":1e400}', TOO_LARGE),
        (b'{"events":[{"type":"view","member_id":-Infinity,"item_id":"85123A"}]}', NOT_JSON),
        # The same literal beside an invalid event was refused already: now alike alone.
        (b'{"events":[{"type":"view","member_id":NaN,"item_id":"1"},{"type":"view"}]}', NOT_JSON),
    ],
)
async def test_nan_and_infinity_are_refused_with_400_and_nothing_is_published(
    fleet: Fleet, body: bytes, reason: str
) -> None:
    reply = await fleet.post(body)

    assert_error(reply, 400, reason)
    assert fleet.bus.published == []


def _text_fields(model: type[Any]) -> list[str]:
    return [n for n, f in model.model_fields.items() if f.annotation in (str, str | None)]


# Every text field of an event and of its lines (the models fill them from numbers too):
# a field added later is covered without a change here.
TEXT_FIELDS = [("event", name) for name in _text_fields(Event)] + [
    ("line", name) for name in _text_fields(EventItem)
]


@pytest.mark.parametrize(("where", "field"), TEXT_FIELDS)
@pytest.mark.parametrize(
    ("literal", "reason"),
    [("NaN", NOT_JSON), ("Infinity", NOT_JSON), ("-Infinity", NOT_JSON), ("1e400", TOO_LARGE)],
)
def test_no_text_field_takes_a_number_that_is_not_finite(
    where: str, field: str, literal: str, reason: str
) -> None:
    bus = MemoryBus()
    ingestor = Ingestor(bus, PiiScrubber(SECRET), IngestionSettings())  # type: ignore[arg-type]
    event: dict[str, Any] = {"type": "view", "member_id": "m-1", "item_id": "85123A"}
    line: dict[str, Any] = {"item_id": "85123A"}
    (event if where == "event" else line)[field] = "@@"
    event["items"] = [line]
    body = json.dumps(event).replace('"@@"', literal).encode()

    with pytest.raises(BadPayload, match=reason):
        ingestor.publish_events(body)
    assert bus.published == []


async def test_ids_spelled_like_those_numbers_as_strings_and_numeric_ids_are_accepted(
    fleet: Fleet,
) -> None:
    events = [
        {"type": "view", "member_id": "NaN", "item_id": "inf"},
        {"type": "view", "member_id": "-inf", "item_id": "NaN"},
        {"type": "view", "member_id": 17850, "item_id": 85123.5},
    ]

    reply = await fleet.post(json.dumps({"events": events}).encode())

    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == 3
    got = [(e.member_id, e.item_id) for e in fleet.bus.events()]
    assert got == [("NaN", "inf"), ("-inf", "NaN"), ("17850", "85123.5")]


# --- 2. more events than the limit, refused before any is read ----------------------------

MANY = 1_600_000  # the audit's body: 4.8 MB of `{}`


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/events", b'{"events":[' + b",".join([b"{}"] * MANY) + b"]}", {}),
        ("/v1/events?format=segment", b'{"batch":[' + b",".join([b"{}"] * MANY) + b"]}", {}),
        ("/segment/v1/batch", b'{"batch":[' + b",".join([b"{}"] * MANY) + b"]}", basic(WRITE_KEY)),
    ],
    ids=["native", "segment format", "segment endpoint"],
)
async def test_a_body_of_millions_of_empty_events_is_413_at_once(
    fleet: Fleet, path: str, body: bytes, headers: dict[str, str]
) -> None:
    started = time.monotonic()
    reply = await fleet.gateway.http.post(path, content=body, headers=headers)

    assert_error(reply, 413, f"{MANY} events in one request; at most 5000")
    # It used to answer 503 "retry" after the gateway's 5 s deadline, having worked 10-18 s.
    assert time.monotonic() - started < 4
    assert fleet.bus.published == []


def _shapes(n: int) -> list[tuple[str, bytes]]:
    """A body of `n` empty entries in every shape each format takes."""
    entries = b",".join([b"{}"] * n)
    lines = b"\n".join([b"{}"] * n)
    return [
        ("native", b"[" + entries + b"]"),
        ("native", b'{"events":[' + entries + b"]}"),
        ("segment", b"[" + entries + b"]"),
        ("segment", b'{"batch":[' + entries + b'],"context":{}}'),
        ("ga4", b"[" + entries + b"]"),
        ("ga4", b'{"client_id":"c","events":[' + entries + b"]}"),
        ("google_retail", b"[" + entries + b"]"),
        ("google_retail", b'{"userEvents":[' + entries + b"]}"),
        ("google_retail", b'{"userEventInlineSource":{"userEvents":[' + entries + b"]}}"),
        (
            "google_retail",
            b'{"inputConfig":{"userEventInlineSource":{"userEvents":[' + entries + b"]}}}",
        ),
        ("google_retail", lines + b"\n"),
        ("google_retail", b"\xef\xbb\xbf" + lines.replace(b"\n", b"\r\n\r\n")),
    ]


@pytest.fixture
def untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if a body is validated, decoded for its events or translated."""

    def refuse(*args: object) -> None:
        raise AssertionError("the body was read past its count")

    monkeypatch.setattr(domain, "_all_valid", refuse)
    monkeypatch.setattr(formats, "read", refuse)
    monkeypatch.setattr(formats, "translate_body", refuse)


@pytest.mark.parametrize(("fmt", "body"), _shapes(11))
@pytest.mark.usefixtures("untouched")
def test_every_format_is_counted_before_its_events_are_read(fmt: str, body: bytes) -> None:
    bus = MemoryBus()
    ingestor = Ingestor(bus, PiiScrubber(SECRET), IngestionSettings(max_batch_events=10))  # type: ignore[arg-type]

    with pytest.raises(TooManyEvents, match=r"^11 events in one request; at most 10$"):
        ingestor.publish_events(body, fmt)
    assert bus.published == []


@pytest.mark.parametrize(("fmt", "body"), _shapes(10))
def test_a_body_at_the_limit_is_read_and_its_entries_answered(fmt: str, body: bytes) -> None:
    ingestor = Ingestor(MemoryBus(), PiiScrubber(SECRET), IngestionSettings(max_batch_events=10))  # type: ignore[arg-type]

    outcome = ingestor.publish_events(body, fmt)

    assert len(outcome.rejected) + outcome.ignored == 10
    assert formats.count(fmt, body) == len(formats.translate(fmt, body)) == 10


# --- 3. JSON lines end at "\n", not at U+2028 ---------------------------------------------

# Characters `str.splitlines()` breaks at, which JSON allows unescaped inside a string.
LINE_BREAKING = ["\u2028", "\u2029", "\u0085"]


def _user_event(visitor: str, note: str) -> str:
    event = {
        "eventType": "detail-page-view",
        "visitorId": visitor,
        "productDetails": [{"product": {"id": "85123A"}}],
        "attributes": {"note": {"text": [note]}},
    }
    return json.dumps(event, ensure_ascii=False)


@pytest.mark.parametrize("character", LINE_BREAKING, ids=["U+2028", "U+2029", "U+0085"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
async def test_json_lines_keep_unicode_line_separators_inside_values(
    fleet: Fleet, character: str, newline: str
) -> None:
    lines = [_user_event("v-1", f"gift{character}wrap"), _user_event("v-2", "plain")]
    body = (newline.join(lines) + newline).encode()

    reply = await fleet.post(body, "google_retail", **{"content-type": "application/x-ndjson"})

    assert reply.status_code == 202, reply.text
    assert (reply.json()["accepted"], reply.json()["rejected"]) == (2, [])
    events = fleet.bus.events()
    assert [e.member_id for e in events] == ["v-1", "v-2"]
    assert events[0].context["source"]["attributes"]["note"]["text"] == [f"gift{character}wrap"]


async def test_a_bad_json_line_is_rejected_by_its_index_and_its_line(fleet: Fleet) -> None:
    body = "\n".join(
        [_user_event("v-1", "a\u2028b"), "", "{not json", _user_event("v-2", "c\u2029d")]
    ).encode()

    reply = await fleet.post(body, "google_retail")

    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == 2
    [rejected] = reply.json()["rejected"]
    assert rejected["index"] == 1
    assert rejected["reason"].startswith("line 3 is not valid JSON")


# --- 4. a request ingestion could not answer in time is not published later ---------------


async def test_a_request_slower_than_the_deadline_is_not_published_and_a_retry_counts_once() -> (
    None
):
    body = json.dumps({"type": "view", "member_id": "m-1", "item_id": "85123A"}).encode()
    async with Fleet(limit=5000, deadlines={"ingestion": 0.3}) as fleet:
        fleet.clock.delay = 1.0  # validation takes longer than the gateway waits

        reply = await fleet.post(body)
        detail = assert_error(reply, 503, "ingestion did not answer in time (DEADLINE_EXCEEDED)")

        assert "may have accepted" in detail and "nothing was accepted" not in detail
        assert reply.headers["retry-after"] == "1"
        # The work goes on past the deadline; once it is over, nothing was published.
        assert await asyncio.to_thread(fleet.ingestor.finished.wait, 10)
        assert fleet.bus.published == []

        fleet.clock.delay = 0.0
        retried = await fleet.post(body)
        assert retried.status_code == 202, retried.text
        assert [e.member_id for e in fleet.bus.events()] == ["m-1"]


async def test_a_slow_ingestion_answers_deadline_exceeded_over_grpc_and_publishes_nothing(
    fleet: Fleet,
) -> None:
    fleet.clock.delay = 0.6
    request = ingestion_pb2.PublishEventsRequest(
        payload=b'{"type":"view","member_id":"m-1","item_id":"85123A"}'
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.stub.PublishEvents(request, timeout=0.2)

    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert await asyncio.to_thread(fleet.ingestor.finished.wait, 10)
    assert fleet.bus.published == []


@pytest.mark.parametrize("kind", ["events", "items"])
def test_nothing_is_published_once_the_caller_stopped_waiting(kind: str) -> None:
    bus = MemoryBus()
    ingestor = Ingestor(bus, PiiScrubber(SECRET), IngestionSettings())  # type: ignore[arg-type]
    asked: list[bool] = []

    def gone() -> bool:
        asked.append(True)
        return False

    with pytest.raises(TooLate, match="deadline passed before anything was published"):
        if kind == "events":
            body = b'{"type":"view","member_id":"m-1","item_id":"85123A"}'
            ingestor.publish_events(body, in_time=gone)
        else:
            ingestor.upsert_items(b'{"item_id":"85123A"}', in_time=gone)
    assert asked == [True]
    assert bus.published == []
