"""Fuzzing the event decoders of every format with arbitrary bodies.

Whatever the bytes, ingestion either answers (accepted events, rejections with reasons) or
refuses the body as a whole with `BadPayload`, the documented rejection; never another
exception, which would surface as a 5xx. And what it would publish holds no email or phone
number in clear: every published record is a fixed point of the scrubber.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.bus import EVENTS_TOPIC, IMPRESSIONS_TOPIC
from services.common.bus.base import Message
from services.common.events import read_events
from services.common.members import read_command
from services.common.pii import PiiScrubber
from services.ingestion.domain import BadPayload, Ingestor
from services.ingestion.formats import FORMATS
from services.ingestion.settings import IngestionSettings
from tests.pii_strategies import contact_data, contact_keys, dumps, spellings

SCRUB = PiiScrubber(b"fuzz-tests-secret-0123456789abcd")


class RecordingBus:
    """The edge of this unit: keeps what would be published instead of writing a log."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Message]] = []

    def publish(self, topic: str, messages: list[Message]) -> None:
        self.published.extend((topic, m) for m in messages)


def _ingest(body: bytes, fmt: str) -> list[tuple[str, Message]]:
    bus = RecordingBus()
    ingestor = Ingestor(bus, SCRUB, IngestionSettings(max_batch_events=50))  # type: ignore[arg-type]
    try:
        outcome = ingestor.publish_events(body, fmt)
    except BadPayload as exc:
        assert str(exc), "a refusal says why"
        return []
    for rejected in outcome.rejected:
        assert rejected.reason
    return bus.published


def _assert_clean(published: list[tuple[str, Message]]) -> None:
    for topic, message in published:
        assert not SCRUB.finds(message.key, "member_id"), message.key
        if topic in (EVENTS_TOPIC, IMPRESSIONS_TOPIC):
            for event in read_events(message.value):
                assert not SCRUB.finds(event), event
        else:
            # Links and consent: ids only, scrubbed as the events' member ids are.
            read_command(message.value)
        assert not SCRUB.finds(json.loads(message.value))


# Names and keys the mappers look for, so that fuzzed bodies reach deep into them.
KNOWN_KEYS = [
    "events", "event_id", "type", "member_id", "item_id", "items", "quantity", "price",
    "revenue", "timestamp", "context", "query", "order_id", "batch", "event", "userId",
    "anonymousId", "messageId", "properties", "products", "product_id", "traits", "name",
    "params", "client_id", "user_id", "value", "currency", "search_term", "userEvents",
    "eventType", "visitorId", "userInfo", "productDetails", "product", "id", "searchQuery",
    "eventTime", "attributes", "text", "originalTimestamp", "total", "rating",
]  # fmt: skip
KNOWN_VALUES = [
    "view", "purchase", "search", "refund", "rate", "track", "identify", "Product Viewed",
    "Order Completed", "Order Refunded", "Products Searched", "Product Reviewed", "view_item",
    "purchase", "refund", "search", "add_to_cart", "detail-page-view", "purchase-complete",
    "search", "2026-11-22T10:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00",
    "1700000000000000", "-1", "1e400", "EUR",
]  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(KNOWN_VALUES),
    contact_data(),
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), contact_keys(), st.text(max_size=6))
BODIES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=40,
)

IDS = st.one_of(st.text(min_size=1, max_size=16), contact_data(), st.integers(0, 10**12))
TEXTS = st.one_of(st.text(max_size=30), contact_data(), contact_data().map(lambda c: f"at {c}"))
GOOD_AMOUNTS = st.floats(0, 500) | st.integers(1, 20)
AMOUNTS = st.one_of(GOOD_AMOUNTS, GOOD_AMOUNTS, st.floats(), st.integers(-5, 10**10))
NATIVE_TYPES = ["view", "click", "impression", "purchase", "search", "refund", "rate"]
SEGMENT_EVENTS = ["Product Viewed", "Order Completed", "Order Refunded", "Products Searched"]
GA4_EVENTS = ["view_item", "purchase", "refund", "search", "add_to_cart"]
RETAIL_EVENTS = ["detail-page-view", "purchase-complete", "search", "add-to-cart"]
WILD_TIMES = st.one_of(
    st.sampled_from(KNOWN_VALUES[-7:-4]), st.datetimes().map(lambda d: d.isoformat())
)
RECENT = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 1, 1))
TIMES = st.one_of(RECENT.map(lambda d: d.isoformat() + "Z"), WILD_TIMES)
SMALL = st.recursive(
    LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(KEYS, c, max_size=3), max_leaves=6
)
CONTEXTS = st.dictionaries(KEYS, SMALL, max_size=3)


def _some(required: dict[str, Any], **optional: st.SearchStrategy[Any]) -> Any:
    return st.fixed_dictionaries(required, optional=optional)


COUNTS = st.integers(1, 20) | AMOUNTS
RATINGS = st.floats(0, 5) | AMOUNTS
NATIVE_EVENT = _some(
    {"type": st.sampled_from(NATIVE_TYPES), "member_id": IDS, "item_id": IDS, "query": TEXTS},
    event_id=IDS, session_id=IDS, rating=RATINGS, order_id=IDS, revenue=AMOUNTS,
    timestamp=TIMES, context=CONTEXTS, recommendation_id=IDS,
    items=st.lists(_some({"item_id": IDS}, quantity=COUNTS, price=AMOUNTS, category=TEXTS)),
)  # fmt: skip
SEGMENT_PRODUCT = _some({"product_id": IDS}, price=AMOUNTS, quantity=COUNTS, category=TEXTS)
SEGMENT_MESSAGE = _some(
    {"type": st.just("track"), "event": st.sampled_from(SEGMENT_EVENTS), "userId": IDS,
     "properties": _some({"product_id": IDS, "query": TEXTS, "order_id": IDS,
                          "products": st.lists(SEGMENT_PRODUCT, min_size=1, max_size=3)},
                         price=AMOUNTS, total=AMOUNTS, rating=RATINGS, note=TEXTS)},
    anonymousId=IDS, messageId=IDS, timestamp=TIMES, context=CONTEXTS, traits=CONTEXTS,
)  # fmt: skip
GA4_ITEM = _some({"item_id": IDS}, price=AMOUNTS, quantity=COUNTS, item_category=TEXTS)
GA4_PARAMS = _some(
    {"items": st.lists(GA4_ITEM, min_size=1, max_size=3), "search_term": TEXTS,
     "transaction_id": IDS},
    value=AMOUNTS, currency=st.sampled_from(["EUR", "usd"]) | TEXTS, note=TEXTS,
)  # fmt: skip
GA4_BODY = _some(
    {"events": st.lists(_some({"name": st.sampled_from(GA4_EVENTS), "params": GA4_PARAMS}),
                        max_size=3), "client_id": IDS},
    user_id=IDS, timestamp_micros=AMOUNTS, user_properties=CONTEXTS,
)  # fmt: skip
RETAIL_EVENT = _some(
    {"eventType": st.sampled_from(RETAIL_EVENTS), "visitorId": IDS, "searchQuery": TEXTS,
     "productDetails": st.lists(_some({"product": _some({"id": IDS})}, quantity=COUNTS),
                                min_size=1, max_size=3)},
    userInfo=_some({}, userId=IDS, ipAddress=TEXTS), eventTime=TIMES, attributes=CONTEXTS,
)  # fmt: skip
SHAPED = st.one_of(
    st.tuples(st.just("native"), st.lists(NATIVE_EVENT, max_size=4).map(lambda e: {"events": e})),
    st.tuples(
        st.just("segment"), st.lists(SEGMENT_MESSAGE, max_size=4).map(lambda m: {"batch": m})
    ),
    st.tuples(st.just("ga4"), GA4_BODY),
    st.tuples(st.just("google_retail"), st.lists(RETAIL_EVENT, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(case=SHAPED, spelling=spellings())
def test_bodies_shaped_like_each_format_are_answered_and_published_clean(
    case: tuple[str, Any], spelling: random.Random
) -> None:
    fmt, value = case
    _assert_clean(_ingest(dumps(value, spelling).encode(), fmt))


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300), fmt=st.sampled_from(FORMATS))
def test_arbitrary_bytes_are_answered_or_refused(body: bytes, fmt: str) -> None:
    _assert_clean(_ingest(body, fmt))


@settings(max_examples=300, deadline=None)
@given(value=BODIES, fmt=st.sampled_from(FORMATS), spelling=spellings())
def test_arbitrary_json_in_every_format_is_answered_and_published_clean(
    value: Any, fmt: str, spelling: random.Random
) -> None:
    _assert_clean(_ingest(dumps(value, spelling).encode(), fmt))


@settings(max_examples=300, deadline=None)
@given(value=BODIES, fmt=st.sampled_from(FORMATS), cut=st.integers(0, 200), junk=st.binary())
def test_truncated_or_spliced_json_is_answered_or_refused(
    value: Any, fmt: str, cut: int, junk: bytes
) -> None:
    text = json.dumps(value).encode()
    _assert_clean(_ingest(text[:cut] + junk + text[cut:], fmt))
