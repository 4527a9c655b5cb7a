"""Event formats shops already emit (Segment, GA4, Google Retail) mapped onto native events.

The fixtures are the example payloads of each public spec, copied as data (URLs cited next to
each); where a spec shows only an event's properties (Segment's `analytics.track(...)` calls,
gtag's `gtag("event", ...)` calls), they are wrapped in the HTTP body shape the same vendor
documents for its server API.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.events import Event, EventType, parse_event
from services.ingestion.formats import (
    FORMATS,
    Identity,
    Translated,
    read,
    translate,
    translate_body,
)


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _only(fmt: str, body: Any) -> tuple[dict[str, Any], Event]:
    """The single native event one source event became, and that it passes `parse_event`."""
    results = translate(fmt, body if isinstance(body, bytes) else _body(body))
    assert len(results) == 1
    result = results[0]
    assert result.error is None, result.error
    assert result.ignored is None
    assert len(result.events) == 1
    raw = result.events[0]
    return raw, parse_event(raw)


def _lines(event: Event) -> list[tuple[str, int, float | None, str | None]]:
    return [(line.item_id, line.quantity, line.price, line.category) for line in event.items]


def _all_parse(results: list[Translated]) -> list[Event]:
    return [parse_event(raw) for result in results for raw in result.events]


# ---------------------------------------------------------------------------------------------
# Segment e-commerce v2
# Properties: https://segment.com/docs/connections/spec/ecommerce/v2/ (each event's example)
# Envelope: https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/
# ---------------------------------------------------------------------------------------------

MONOPOLY = {
    "product_id": "507f1f77bcf86cd799439011",
    "sku": "G-32",
    "category": "Games",
    "name": "Monopoly: 3rd Edition",
    "brand": "Hasbro",
    "variant": "200 pieces",
    "price": 18.99,
    "quantity": 1,
    "coupon": "MAYDEALS",
    "position": 3,
    "url": "https://www.example.com/product/path",
    "image_url": "https://www.example.com/product/path.jpg",
}
PRODUCT_VIEWED = {**MONOPOLY, "currency": "usd", "value": 18.99}
PRODUCT_CLICKED = dict(MONOPOLY)
PRODUCT_ADDED = {"cart_id": "skdjsidjsdkdj29j", **MONOPOLY}
PRODUCT_REMOVED = {"cart_id": "ksjdj92dj29dj92d2j", **MONOPOLY}
PRODUCT_ADDED_TO_WISHLIST = {
    "wishlist_id": "skdjsidjsdkdj29j",
    "wishlist_name": "Loved Games",
    **MONOPOLY,
}
PRODUCT_REVIEWED = {
    "product_id": "507f1f77bcf86cd799439011",
    "review_id": "kdfjrj39fj39jf3",
    "review_body": "I love this product",
    "rating": "5",
}
ORDER_PRODUCTS = [
    {
        "product_id": "507f1f77bcf86cd799439011",
        "sku": "45790-32",
        "name": "Monopoly: 3rd Edition",
        "price": 19,
        "quantity": 1,
        "category": "Games",
        "url": "https://www.example.com/product/path",
        "image_url": "https:///www.example.com/product/path.jpg",
    },
    {
        "product_id": "505bd76785ebb509fc183733",
        "sku": "46493-32",
        "name": "Uno Card Game",
        "price": 3,
        "quantity": 2,
        "category": "Games",
    },
]
ORDER_COMPLETED = {
    "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
    "order_id": "50314b8e9bcf000000000000",
    "affiliation": "Google Store",
    "total": 27.50,
    "subtotal": 22.50,
    "revenue": 25.00,
    "shipping": 3,
    "tax": 2,
    "discount": 2.5,
    "coupon": "hasbros",
    "currency": "USD",
    "products": ORDER_PRODUCTS,
}
ORDER_REFUNDED = {
    "order_id": "50314b8e9bcf000000000000",
    "total": 30,
    "currency": "USD",
    "products": ORDER_PRODUCTS,
}
PRODUCTS_SEARCHED = {"query": "blue roses"}
PRODUCT_LIST_VIEWED: dict[str, Any] = {
    "list_id": "hot_deals_1",
    "category": "Deals",
    "products": [
        {
            "product_id": "507f1f77bcf86cd799439011",
            "sku": "45790-32",
            "name": "Monopoly: 3rd Edition",
            "price": 19,
            "position": 1,
            "category": "Games",
            "url": "https://www.example.com/product/path",
            "image_url": "https://www.example.com/product/path.jpg",
        },
        {
            "product_id": "505bd76785ebb509fc183733",
            "sku": "46493-32",
            "name": "Uno Card Game",
            "price": 3,
            "position": 2,
            "category": "Games",
        },
    ],
}
CART_VIEWED = {
    "cart_id": "d92jd29jd92jd29j92d92jd",
    "products": PRODUCT_LIST_VIEWED["products"],
}

# The HTTP Tracking API's example Track call (POST /v1/track), with the event swapped in.
HTTP_TRACK = {
    "userId": "019mr8mf4r",
    "context": {"ip": "24.5.68.47"},
    "timestamp": "2012-12-02T00:30:12.984Z",
    "writeKey": "YOUR_WRITE_KEY",
}

# The HTTP Tracking API's example batch (POST /v1/batch), verbatim.
HTTP_BATCH: dict[str, Any] = {
    "batch": [
        {
            "type": "identify",
            "userId": "019mr8mf4r",
            "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
            "timestamp": "2012-12-02T00:30:08.276Z",
        },
        {
            "type": "track",
            "userId": "019mr8mf4r",
            "event": "Song Played",
            "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
            "timestamp": "2012-12-02T00:30:12.984Z",
        },
        {
            "type": "identify",
            "userId": "971mj8mk7p",
            "traits": {"email": "cindy@example.com", "name": "Cindy Gonzalez", "age": 23},
            "timestamp": "2015-2-02T00:30:08.276Z",
        },
        {
            "type": "track",
            "userId": "971mj8mk7p",
            "event": "Song Played",
            "properties": {"name": "Get Right", "artist": "Jennifer Lopez"},
            "timestamp": "2015-2-02T00:30:12.984Z",
        },
    ],
    "writeKey": "YOUR_WRITE_KEY",
    "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}},
}

# https://segment.com/docs/connections/spec/track/ "a complete example of a track call".
COMPLETE_TRACK = {
    "anonymousId": "23adfd82-aa0f-45a7-a756-24f2a7a4c895",
    "context": {
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "page": {
            "path": "/academy/",
            "referrer": "",
            "search": "",
            "title": "Analytics Academy",
            "url": "https://segment.com/academy/",
        },
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_0) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/46.0.2490.86 Safari/537.36",
        "ip": "108.0.78.21",
    },
    "event": "Course Clicked",
    "integrations": {},
    "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
    "properties": {"title": "Intro to Analytics"},
    "receivedAt": "2015-12-12T19:11:01.266Z",
    "sentAt": "2015-12-12T19:11:01.169Z",
    "timestamp": "2015-12-12T19:11:01.249Z",
    "type": "track",
    "userId": "AiUGstSDIg",
    "originalTimestamp": "2015-12-12T19:11:01.152Z",
}

# https://segment.com/docs/connections/spec/identify/ "a complete example of an identify call".
COMPLETE_IDENTIFY = {
    "anonymousId": "507f191e810c19729de860ea",
    "channel": "browser",
    "context": {
        "ip": "8.8.8.8",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_5) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/40.0.2214.115 Safari/537.36",
    },
    "integrations": {"All": False, "Mixpanel": True, "Salesforce": True},
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "receivedAt": "2015-02-23T22:28:55.387Z",
    "sentAt": "2015-02-23T22:28:55.111Z",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",
        "logins": 5,
        "address": {
            "street": "6th St",
            "city": "San Francisco",
            "state": "CA",
            "postalCode": "94103",
            "country": "USA",
        },
    },
    "type": "identify",
    "userId": "97980cfea0067",
    "version": "1.1",
}


def _track(event: str, properties: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    message_id = "msg-" + event.lower().replace(" ", "-")
    return {
        **HTTP_TRACK,
        "event": event,
        "properties": copy.deepcopy(properties),
        "messageId": message_id,
        **overrides,
    }


ORDER_LINES = [
    ("507f1f77bcf86cd799439011", 1, 19.0, "Games"),
    ("505bd76785ebb509fc183733", 2, 3.0, "Games"),
]
MONOPOLY_LINE = [("507f1f77bcf86cd799439011", 1, 18.99, "Games")]


@pytest.mark.parametrize(
    ("name", "properties", "native_type", "lines"),
    [
        ("Product Viewed", PRODUCT_VIEWED, EventType.VIEW, MONOPOLY_LINE),
        ("Product Clicked", PRODUCT_CLICKED, EventType.CLICK, MONOPOLY_LINE),
        ("Product Added", PRODUCT_ADDED, EventType.ADD_TO_CART, MONOPOLY_LINE),
        ("Product Removed", PRODUCT_REMOVED, EventType.REMOVE_FROM_CART, MONOPOLY_LINE),
        ("Product Added to Wishlist", PRODUCT_ADDED_TO_WISHLIST, EventType.WISHLIST, MONOPOLY_LINE),
    ],
)
def test_segment_product_events_map_to_one_item_event(
    name: str, properties: dict[str, Any], native_type: EventType, lines: list[Any]
) -> None:
    raw, event = _only("segment", _track(name, properties))

    assert event.type is native_type
    assert event.member_id == "019mr8mf4r"
    assert event.item_id == "507f1f77bcf86cd799439011"  # product_id wins over sku
    assert _lines(event) == lines
    assert raw["timestamp"] == "2012-12-02T00:30:12.984000Z"
    assert event.event_id == "seg-msg-" + name.lower().replace(" ", "-")
    assert event.revenue is None and event.order_id is None


def test_segment_product_viewed_keeps_currency_upper_cased_and_the_rest_as_source() -> None:
    raw, event = _only("segment", _track("Product Viewed", PRODUCT_VIEWED))

    assert event.currency == "USD"  # the spec's example sends 'usd'
    source = raw["context"]["source"]
    assert source["format"] == "segment"
    assert source["event"] == "Product Viewed"
    assert source["properties"]["brand"] == "Hasbro"  # nothing the shop sent is lost
    assert source["context"] == {"ip": "24.5.68.47"}
    assert "writeKey" not in source  # a credential, never stored


def test_segment_order_completed_maps_to_a_purchase_with_its_products() -> None:
    raw, event = _only("segment", _track("Order Completed", ORDER_COMPLETED))

    assert event.type is EventType.PURCHASE
    assert event.member_id == "019mr8mf4r"
    assert event.order_id == "50314b8e9bcf000000000000"
    assert event.revenue == 25.0  # `revenue` before `total`
    assert event.currency == "USD"
    assert _lines(event) == ORDER_LINES
    assert event.item_id is None
    assert raw["context"]["source"]["properties"]["checkout_id"] == "fksdjfsdjfisjf9sdfjsd9f"


def test_segment_order_completed_without_revenue_falls_back_to_total() -> None:
    properties = {key: value for key, value in ORDER_COMPLETED.items() if key != "revenue"}

    _, event = _only("segment", _track("Order Completed", properties))

    assert event.revenue == 27.5


def test_segment_order_refunded_maps_to_a_refund_of_the_amount_refunded() -> None:
    _, event = _only("segment", _track("Order Refunded", ORDER_REFUNDED))

    assert event.type is EventType.REFUND
    assert event.order_id == "50314b8e9bcf000000000000"
    assert event.revenue == 30.0  # from `total`, positive: the amount refunded
    assert event.currency == "USD"
    assert _lines(event) == ORDER_LINES

    negative = {**ORDER_REFUNDED, "total": -30}
    _, event = _only("segment", _track("Order Refunded", negative))
    assert event.revenue == 30.0


def test_segment_products_searched_maps_to_a_search() -> None:
    _, event = _only("segment", _track("Products Searched", PRODUCTS_SEARCHED))

    assert event.type is EventType.SEARCH
    assert event.query == "blue roses"
    assert event.member_id == "019mr8mf4r"
    assert event.items == []


def test_segment_product_list_viewed_maps_to_an_impression_of_each_product() -> None:
    _, event = _only("segment", _track("Product List Viewed", PRODUCT_LIST_VIEWED))

    assert event.type is EventType.IMPRESSION
    assert _lines(event) == [
        ("507f1f77bcf86cd799439011", 1, 19.0, "Games"),
        ("505bd76785ebb509fc183733", 1, 3.0, "Games"),
    ]


def test_segment_product_list_with_an_unidentified_product_is_ignored() -> None:
    properties = copy.deepcopy(PRODUCT_LIST_VIEWED)
    del properties["products"][1]["product_id"], properties["products"][1]["sku"]

    [result] = translate("segment", _body(_track("Product List Viewed", properties)))

    assert result.ignored == "Product List Viewed"
    assert result.events == [] and result.error is None


def test_segment_product_reviewed_maps_to_a_rating() -> None:
    _, event = _only("segment", _track("Product Reviewed", PRODUCT_REVIEWED))

    assert event.type is EventType.RATE
    assert event.rating == 5.0
    assert event.item_id == "507f1f77bcf86cd799439011"


def test_segment_recommendation_id_is_carried_through() -> None:
    properties = {**PRODUCT_CLICKED, "recommendation_id": "r-42"}

    _, event = _only("segment", _track("Product Clicked", properties))

    assert event.recommendation_id == "r-42"


def test_segment_v1_names_and_loose_spelling_are_understood() -> None:
    for name in ("Viewed Product", "product viewed", "product_viewed"):
        _, event = _only("segment", _track(name, PRODUCT_VIEWED))
        assert event.type is EventType.VIEW


def test_segment_complete_track_call_prefers_user_id_and_keeps_its_envelope() -> None:
    message = {**COMPLETE_TRACK, "event": "Product Clicked", "properties": PRODUCT_CLICKED}

    raw, event = _only("segment", message)

    assert event.member_id == "AiUGstSDIg"  # userId before anonymousId
    assert event.event_id == "seg-ajs-f8ca1e4de5024d9430b3928bd8ac6b96"
    assert raw["timestamp"] == "2015-12-12T19:11:01.249000Z"
    source = raw["context"]["source"]
    assert source["context"]["page"]["url"] == "https://segment.com/academy/"
    assert source["anonymousId"] == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"
    assert source["receivedAt"] == "2015-12-12T19:11:01.266Z"


def test_segment_complete_track_call_of_a_custom_event_is_ignored_by_name() -> None:
    [result] = translate("segment", _body(COMPLETE_TRACK))

    assert result == Translated(
        0,
        "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
        [],
        "Course Clicked",
        # Ignored as an event, the call still links its anonymous visitor to its member.
        identity=Identity(
            "AiUGstSDIg",
            ("23adfd82-aa0f-45a7-a756-24f2a7a4c895",),
            timestamp="2015-12-12T19:11:01.249000Z",
        ),
    )


def test_segment_anonymous_visitor_is_the_member() -> None:
    message = {**COMPLETE_TRACK, "event": "Product Viewed", "properties": PRODUCT_VIEWED}
    del message["userId"]

    _, event = _only("segment", message)

    assert event.member_id == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"


def test_segment_spec_batch_of_identify_and_custom_tracks_is_all_ignored() -> None:
    results = translate("segment", _body(HTTP_BATCH))

    assert [result.index for result in results] == [0, 1, 2, 3]
    assert [result.ignored for result in results] == [
        "identify",
        "Song Played",
        "identify",
        "Song Played",
    ]
    assert all(result.events == [] and result.error is None for result in results)


def test_segment_mixed_batch_counts_what_it_ignored_and_maps_the_rest() -> None:
    batch = copy.deepcopy(HTTP_BATCH)
    added = _track("Product Added", PRODUCT_ADDED)
    del added["messageId"], added["writeKey"]
    nobody = _track("Product Viewed", PRODUCT_VIEWED)
    del nobody["userId"]
    batch["batch"] += [
        {"type": "track", **added},
        {"type": "page", "userId": "019mr8mf4r", "name": "Tracking HTTP API"},
        {"type": "track", **_track("Cart Viewed", CART_VIEWED)},
        {"type": "track", **nobody},
        {"type": "screen", "userId": "019mr8mf4r", "name": "Home"},
    ]

    results = translate("segment", _body(batch))

    ignored = Counter(result.ignored for result in results if result.ignored)
    assert ignored == {"identify": 2, "Song Played": 2, "page": 1, "Cart Viewed": 1, "screen": 1}
    errors = [result for result in results if result.error]
    assert [result.index for result in errors] == [7]
    assert "neither userId nor anonymousId" in (errors[0].error or "")
    [event] = _all_parse(results)
    assert event.type is EventType.ADD_TO_CART
    assert re.fullmatch(r"seg-[0-9a-f]{32}", event.event_id)  # no messageId: a hash
    # the batch context is merged under the message's own
    device = event.context["source"]["context"]["device"]
    assert device == {"type": "phone", "name": "Apple iPhone 6"}
    assert event.context["source"]["context"]["ip"] == "24.5.68.47"


def test_segment_identify_bodies_are_ignored_with_or_without_a_type() -> None:
    [typed] = translate("segment", _body(COMPLETE_IDENTIFY))
    assert typed == Translated(
        0,
        "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        [],
        "identify",
        identity=Identity(
            "97980cfea0067", ("507f191e810c19729de860ea",), timestamp="2015-02-23T22:28:55.111000Z"
        ),
    )

    # The HTTP API's example Identify call (POST /v1/identify) carries no `type`.
    http_identify = {
        "userId": "019mr8mf4r",
        "traits": {
            "email": "pgibbons@example.com",
            "name": "Peter Gibbons",
            "industry": "Technology",
        },
        "context": {"ip": "24.5.68.47"},
        "timestamp": "2012-12-02T00:30:08.276Z",
        "writeKey": "YOUR_WRITE_KEY",
    }
    [untyped] = translate("segment", _body(http_identify))
    assert untyped.ignored == "identify"


def test_segment_product_viewed_without_an_id_says_what_is_missing() -> None:
    properties = {
        key: value for key, value in PRODUCT_VIEWED.items() if key not in ("product_id", "sku")
    }

    [result] = translate("segment", _body(_track("Product Viewed", properties)))

    assert result.error == "Product Viewed needs properties.product_id or sku"
    assert result.events == []
    assert result.source_id == "msg-product-viewed"


def test_segment_sku_stands_in_for_a_missing_product_id() -> None:
    properties = {key: value for key, value in PRODUCT_VIEWED.items() if key != "product_id"}

    _, event = _only("segment", _track("Product Viewed", properties))

    assert event.item_id == "G-32"


def test_segment_missing_user_is_an_error_with_its_reason() -> None:
    message = _track("Product Added", PRODUCT_ADDED)
    del message["userId"]

    [result] = translate("segment", _body(message))

    assert result.error == "Product Added: the message has neither userId nor anonymousId"
    assert result.events == []


@pytest.mark.parametrize(
    ("name", "properties", "reason"),
    [
        (
            "Order Completed",
            {**ORDER_COMPLETED, "products": []},
            "Order Completed needs properties.products: a native purchase names its items",
        ),
        (
            "Order Refunded",
            {"order_id": "50314b8e9bcf000000000000"},
            "Order Refunded needs properties.products, or the amount refunded (revenue or total)"
            ": a native refund names its items",
        ),
        (
            "Order Completed",
            {**ORDER_COMPLETED, "products": [ORDER_PRODUCTS[0], {"name": "Uno Card Game"}]},
            "Order Completed: properties.products[1] needs product_id or sku",
        ),
        (
            "Order Completed",
            {**ORDER_COMPLETED, "products": "Monopoly"},
            "properties.products must be a list",
        ),
        (
            "Product Added",
            {**PRODUCT_ADDED, "quantity": 0},
            "properties.quantity must be a whole number of at least 1, got 0",
        ),
        (
            "Product Added",
            {**PRODUCT_ADDED, "price": "cheap"},
            "properties.price must be a number, got 'cheap'",
        ),
        ("Products Searched", {"query": "  "}, "Products Searched needs properties.query"),
        ("Product Reviewed", {"product_id": "p-1"}, "Product Reviewed needs properties.rating"),
    ],
)
def test_segment_events_that_cannot_be_mapped_say_why(
    name: str, properties: dict[str, Any], reason: str
) -> None:
    [result] = translate("segment", _body(_track(name, properties)))

    assert result.error == reason
    assert result.events == [] and result.ignored is None


def test_segment_timestamp_that_is_not_iso_8601_is_an_error() -> None:
    # The HTTP API's batch example itself carries '2015-2-02T00:30:12.984Z'.
    message = _track("Product Added", PRODUCT_ADDED, timestamp="2015-2-02T00:30:12.984Z")

    [result] = translate("segment", _body(message))

    assert result.error == "timestamp '2015-2-02T00:30:12.984Z' is not an ISO 8601 date-time"


def test_segment_without_timestamp_uses_original_timestamp_else_leaves_it_out() -> None:
    message = _track("Product Added", PRODUCT_ADDED)
    del message["timestamp"]
    raw, _ = _only("segment", message)
    assert "timestamp" not in raw

    message["originalTimestamp"] = "2015-12-12T19:11:01.152+01:00"
    raw, _ = _only("segment", message)
    assert raw["timestamp"] == "2015-12-12T18:11:01.152000Z"


def test_segment_ids_are_deterministic() -> None:
    body = _body({"batch": [_track("Product Added", PRODUCT_ADDED)]})
    first = _all_parse(translate("segment", body))
    again = _all_parse(translate("segment", body))
    assert [e.event_id for e in first] == [e.event_id for e in again] == ["seg-msg-product-added"]

    other = _track("Product Added", PRODUCT_ADDED, messageId="msg-2")
    assert _only("segment", other)[1].event_id == "seg-msg-2"


def test_segment_ids_without_message_id_are_stable_hashes_and_twins_stay_apart() -> None:
    message = _track("Product Added", PRODUCT_ADDED)
    del message["messageId"]
    body = _body({"batch": [message, message]})

    first = _all_parse(translate("segment", body))
    again = _all_parse(translate("segment", body))

    ids = [event.event_id for event in first]
    assert ids == [event.event_id for event in again]
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"seg-[0-9a-f]{32}", event_id) for event_id in ids)
    changed = {**message, "properties": {**PRODUCT_ADDED, "quantity": 2}}
    assert _only("segment", changed)[1].event_id not in ids


def test_segment_very_long_message_id_is_hashed_to_fit() -> None:
    message = _track("Product Added", PRODUCT_ADDED, messageId="m" * 200)

    _, event = _only("segment", message)

    assert re.fullmatch(r"seg-[0-9a-f]{32}", event.event_id)


def test_segment_body_of_the_wrong_shape_is_unreadable() -> None:
    with pytest.raises(ValueError, match="Segment body"):
        translate("segment", b'"Product Viewed"')
    with pytest.raises(ValueError, match="'batch' must be a list"):
        translate("segment", _body({"batch": {"type": "track"}}))


# ---------------------------------------------------------------------------------------------
# GA4 ecommerce
# Params: https://developers.google.com/analytics/devguides/collection/ga4/ecommerce
# Body: https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference
# ---------------------------------------------------------------------------------------------

STAN_TEE = {
    "item_id": "SKU_12345",
    "item_name": "Stan and Friends Tee",
    "affiliation": "Google Merchandise Store",
    "coupon": "SUMMER_FUN",
    "discount": 2.22,
    "index": 0,
    "item_brand": "Google",
    "item_category": "Apparel",
    "item_category2": "Adult",
    "item_category3": "Shirts",
    "item_category4": "Crew",
    "item_category5": "Short sleeve",
    "item_list_id": "related_products",
    "item_list_name": "Related Products",
    "item_variant": "green",
    "location_id": "ChIJIQBpAG2ahYAR_6128GcTUEo",
    "price": 10.01,
    "quantity": 3,
}
GREY_TEE = {
    "item_id": "SKU_12346",
    "item_name": "Google Grey Women's Tee",
    "affiliation": "Google Merchandise Store",
    "coupon": "SUMMER_FUN",
    "discount": 3.33,
    "index": 1,
    "item_brand": "Google",
    "item_category": "Apparel",
    "price": 21.01,
    "promotion_id": "P_12345",
    "promotion_name": "Summer Sale",
    "quantity": 2,
}
VIEW_ITEM = {"currency": "USD", "value": 30.03, "items": [STAN_TEE]}
SELECT_ITEM = {
    "item_list_id": "related_products",
    "item_list_name": "Related products",
    "items": [STAN_TEE],
}
ADD_TO_CART = {"currency": "USD", "value": 30.03, "items": [STAN_TEE]}
REMOVE_FROM_CART = {"currency": "USD", "value": 30.03, "items": [STAN_TEE]}
ADD_TO_WISHLIST = {"currency": "USD", "value": 30.03, "items": [STAN_TEE]}
PURCHASE = {
    "transaction_id": "T_12345",
    "value": 72.05,
    "tax": 3.60,
    "shipping": 5.99,
    "currency": "USD",
    "coupon": "SUMMER_SALE",
    "customer_type": "new",
    "items": [STAN_TEE, GREY_TEE],
}
REFUND = {
    "currency": "USD",
    "transaction_id": "T_12345",
    "value": 30.03,
    "coupon": "SUMMER_FUN",
    "shipping": 3.33,
    "tax": 1.11,
    "items": [STAN_TEE],
}
VIEW_ITEM_LIST = {
    "item_list_id": "related_products",
    "item_list_name": "Related products",
    "items": [STAN_TEE],
}
VIEW_PROMOTION = {
    "creative_name": "Summer Banner",
    "creative_slot": "featured_app_1",
    "promotion_id": "P_12345",
    "promotion_name": "Summer Sale",
    "items": [STAN_TEE],
}
BEGIN_CHECKOUT = {"currency": "USD", "value": 30.03, "coupon": "SUMMER_FUN", "items": [STAN_TEE]}

CLIENT_ID = "123456.7654321"
STAN_LINE = [("SKU_12345", 3, 10.01, "Apparel")]


def _mp(*events: tuple[str, dict[str, Any]], **envelope: Any) -> dict[str, Any]:
    """A Measurement Protocol body (POST /mp/collect) carrying the given events."""
    body: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "timestamp_micros": 1713355200000000,
        "user_properties": {"customer_tier": {"value": "premium"}},
        **envelope,
    }
    body["events"] = [{"name": name, "params": copy.deepcopy(params)} for name, params in events]
    return body


@pytest.mark.parametrize(
    ("name", "params", "native_type"),
    [
        ("view_item", VIEW_ITEM, EventType.VIEW),
        ("select_item", SELECT_ITEM, EventType.CLICK),
        ("add_to_cart", ADD_TO_CART, EventType.ADD_TO_CART),
        ("remove_from_cart", REMOVE_FROM_CART, EventType.REMOVE_FROM_CART),
        ("add_to_wishlist", ADD_TO_WISHLIST, EventType.WISHLIST),
    ],
)
def test_ga4_item_events_map_to_one_item_event(
    name: str, params: dict[str, Any], native_type: EventType
) -> None:
    raw, event = _only("ga4", _mp((name, params)))

    assert event.type is native_type
    assert event.member_id == CLIENT_ID
    assert event.item_id == "SKU_12345"
    assert _lines(event) == STAN_LINE
    assert raw["timestamp"] == "2024-04-17T12:00:00Z"
    assert event.revenue is None and event.order_id is None
    assert re.fullmatch(r"ga4-[0-9a-f]{32}", event.event_id)
    assert event.recommendation_id is None  # item_list_id is not a recommendation


def test_ga4_purchase_maps_to_a_purchase_with_every_item() -> None:
    raw, event = _only("ga4", _mp(("purchase", PURCHASE)))

    assert event.type is EventType.PURCHASE
    assert event.order_id == "T_12345"
    assert event.revenue == 72.05
    assert event.currency == "USD"
    assert _lines(event) == [("SKU_12345", 3, 10.01, "Apparel"), ("SKU_12346", 2, 21.01, "Apparel")]
    assert event.item_id is None
    source = raw["context"]["source"]
    assert source["params"]["tax"] == 3.60
    assert source["user_properties"] == {"customer_tier": {"value": "premium"}}


def test_ga4_refund_maps_to_a_refund() -> None:
    _, event = _only("ga4", _mp(("refund", REFUND)))

    assert event.type is EventType.REFUND
    assert event.order_id == "T_12345"
    assert event.revenue == 30.03
    assert event.currency == "USD"
    assert _lines(event) == STAN_LINE


@pytest.mark.parametrize(
    ("name", "params"), [("view_item_list", VIEW_ITEM_LIST), ("view_promotion", VIEW_PROMOTION)]
)
def test_ga4_lists_with_identified_items_map_to_impressions(
    name: str, params: dict[str, Any]
) -> None:
    _, event = _only("ga4", _mp((name, params)))

    assert event.type is EventType.IMPRESSION
    assert _lines(event) == STAN_LINE


def test_ga4_search_maps_to_a_search() -> None:
    _, event = _only("ga4", _mp(("search", {"search_term": "t-shirts"})))

    assert event.type is EventType.SEARCH
    assert event.query == "t-shirts"


def test_ga4_events_without_a_native_meaning_are_ignored_by_name() -> None:
    promotion_only = {k: v for k, v in VIEW_PROMOTION.items() if k != "items"}
    body = _mp(
        ("begin_checkout", BEGIN_CHECKOUT),
        ("page_view", {}),
        ("view_promotion", promotion_only),
        ("view_item_list", {**VIEW_ITEM_LIST, "items": [{"item_name": "Stan and Friends Tee"}]}),
        ("view_item", VIEW_ITEM),
    )

    results = translate("ga4", _body(body))

    assert [result.ignored for result in results] == [
        "begin_checkout",
        "page_view",
        "view_promotion",
        "view_item_list",
        None,
    ]
    assert [event.type for event in _all_parse(results)] == [EventType.VIEW]


def test_ga4_user_id_is_preferred_over_client_id_and_the_rest_is_kept() -> None:
    raw, event = _only("ga4", _mp(("view_item", VIEW_ITEM), user_id="m-42", api_secret="s3cr3t"))

    assert event.member_id == "m-42"
    source = raw["context"]["source"]
    assert source["client_id"] == CLIENT_ID
    assert "api_secret" not in source
    assert source["name"] == "view_item"


def test_ga4_bare_events_carry_their_ids_in_params() -> None:
    single = {"name": "add_to_cart", "params": {**ADD_TO_CART, "client_id": "c-1"}}
    _, event = _only("ga4", single)
    assert event.member_id == "c-1"
    assert event.type is EventType.ADD_TO_CART

    listed = [
        {"name": "view_item", "params": {**VIEW_ITEM, "user_id": "m-7", "client_id": "c-7"}},
        {"name": "purchase", "params": {**PURCHASE, "user_id": "m-7", "session_id": 1713355}},
    ]
    results = translate("ga4", _body(listed))
    view, purchase = _all_parse(results)
    assert view.member_id == purchase.member_id == "m-7"
    assert purchase.session_id == "1713355"
    assert "timestamp" not in results[0].events[0]  # no timestamp_micros: ingestion stamps it


def test_ga4_event_level_timestamp_wins_over_the_body() -> None:
    body = _mp(("view_item", VIEW_ITEM))
    body["events"][0]["timestamp_micros"] = "1713355260000000"

    raw, _ = _only("ga4", body)

    assert raw["timestamp"] == "2024-04-17T12:01:00Z"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"events": [{"name": "view_item", "params": VIEW_ITEM}]},
            "view_item: no user id; set user_id or client_id (in the body, or in params for an "
            "event sent without a Measurement Protocol body)",
        ),
        (
            _mp(("purchase", {k: v for k, v in PURCHASE.items() if k != "transaction_id"})),
            "purchase needs params.transaction_id",
        ),
        (
            _mp(("refund", {k: v for k, v in REFUND.items() if k not in ("items", "value")})),
            "refund needs params.items, or params.value for a full refund",
        ),
        (
            _mp(("add_to_cart", {**ADD_TO_CART, "items": [{"item_name": "Stan and Friends Tee"}]})),
            "add_to_cart: params.items[0] needs an item_id",
        ),
        (
            _mp(("view_item", {"currency": "USD"})),
            "view_item needs params.items, each with an item_id",
        ),
        (
            _mp(("view_item", {**VIEW_ITEM, "currency": "dollars"})),
            "params.currency must be a 3-letter ISO 4217 currency code, got 'dollars'",
        ),
        (_mp(("search", {})), "search needs params.search_term"),
        (
            _mp(("view_item", VIEW_ITEM), timestamp_micros="soon"),
            "timestamp_micros must be a number, got 'soon'",
        ),
        ({"events": [{"params": VIEW_ITEM}]}, "a GA4 event needs a 'name'"),
        ({"events": ["view_item"]}, "a GA4 event must be a JSON object"),
    ],
)
def test_ga4_events_that_cannot_be_mapped_say_why(body: Any, reason: str) -> None:
    [result] = translate("ga4", _body(body))

    assert result.error == reason
    assert result.events == []


def test_ga4_ids_are_deterministic_and_twins_stay_apart() -> None:
    body = _body(_mp(("add_to_cart", ADD_TO_CART), ("add_to_cart", ADD_TO_CART)))

    first = [event.event_id for event in _all_parse(translate("ga4", body))]
    again = [event.event_id for event in _all_parse(translate("ga4", body))]

    assert first == again
    assert len(set(first)) == 2
    later = _body(_mp(("add_to_cart", ADD_TO_CART), timestamp_micros=1713355300000000))
    assert _all_parse(translate("ga4", later))[0].event_id not in first
    other_user = _body(_mp(("add_to_cart", ADD_TO_CART), client_id="someone-else"))
    assert _all_parse(translate("ga4", other_user))[0].event_id not in first


def test_ga4_body_of_the_wrong_shape_is_unreadable() -> None:
    with pytest.raises(ValueError, match="GA4 body"):
        translate("ga4", _body({"client_id": CLIENT_ID}))
    with pytest.raises(ValueError, match="'events' must be a list"):
        translate("ga4", _body({"client_id": CLIENT_ID, "events": {"name": "purchase"}}))


# ---------------------------------------------------------------------------------------------
# Google Cloud Retail user events
# UserEvent: https://cloud.google.com/retail/docs/reference/rest/v2/projects.locations.catalogs.userEvents
# Types: https://cloud.google.com/retail/docs/user-events
# ---------------------------------------------------------------------------------------------

# https://cloud.google.com/retail/docs/record-events : the userEvents:write request body.
WRITE_DETAIL_PAGE_VIEW = {
    "eventType": "detail-page-view",
    "visitorId": "visitor0",
    "eventTime": "2020-01-01T03:33:33.000001Z",
    "experimentIds": ["321"],
    "attributionToken": "ABC",
    "attributes": {
        "example_text_attribute": {"text": ["text_1", "text_2"]},
        "example_number_attribute": {"numbers": [3.14, 42, 1.2345]},
    },
    "productDetails": [{"product": {"id": "abc"}}],
    "userInfo": {
        "userId": "abc",
        "ipAddress": "8.8.8.8",
        "userAgent": "Mozilla/5.0",
        "directUserRequest": True,
    },
    "uri": "http://example",
    "referrerUri": "http://example",
    "pageViewId": "currentPageUri",
}

# Google's sample import file, verbatim (newline-delimited, two lines invalid on purpose):
# https://github.com/GoogleCloudPlatform/python-docs-samples/blob/main/retail/interactive-tutorials/resources/user_events_some_invalid.json
SAMPLE_EVENTS_FILE = (
    b'{"eventType":"home-page-view","visitorId":"bjbs_group1_visitor1",'
    b'"eventTime":"2022-02-23T10:27:42+00:00"}\n'
    b'{"eventType":"invalid","visitorId":"bjbs_group1_visitor1",'
    b'"eventTime":"2022-02-23T10:27:42+00:00","searchQuery":"RockerJeans teenagers blue jeans"}\n'
    b'{"eventType":"search","visitorId":"bjbs_group1_visitor1",'
    b'"eventTime":"2022-02-23T10:27:42+00:00",'
    b'"searchQuery":"SocksUnlimited teenagers black socks"}\n'
    b'{"eventType":"detail-page-view","visitorId":"bjbs_group1_visitor1",'
    b'"eventTime":"2022-02-23T10:27:42+00:00",'
    b'"productDetails":{"product":{"id":"GGCOGAEC100616"},"quantity":3}}\n'
)


def _retail(event_type: str, **fields: Any) -> dict[str, Any]:
    """A UserEvent laid out as the REST reference's JSON representation (our values)."""
    return {
        "eventType": event_type,
        "visitorId": "visitor-1",
        "sessionId": "session-1",
        "eventTime": "2024-03-01T15:30:00Z",
        "userInfo": {"userId": "user-1", "ipAddress": "203.0.113.0", "userAgent": "Mozilla/5.0"},
        **fields,
    }


JEANS = {
    "product": {
        "id": "GGCOGAEC100616",
        "categories": ["Apparel > Jeans"],
        "priceInfo": {"price": 49.5, "currencyCode": "USD"},
    },
    "quantity": 2,
}


def test_retail_write_example_detail_page_view_maps_to_a_view() -> None:
    raw, event = _only("google_retail", WRITE_DETAIL_PAGE_VIEW)

    assert event.type is EventType.VIEW
    assert event.member_id == "abc"  # userInfo.userId before visitorId
    assert event.item_id == "abc"
    assert _lines(event) == [("abc", 1, None, None)]
    assert raw["timestamp"] == "2020-01-01T03:33:33.000001Z"
    assert re.fullmatch(r"gcr-[0-9a-f]{32}", event.event_id)
    assert event.recommendation_id is None  # attributionToken is Google's, not ours
    source = raw["context"]["source"]
    assert source["format"] == "google_retail"
    assert "userInfo" not in source  # the person's IP address and user agent: not kept
    assert source["attributes"]["example_number_attribute"] == {"numbers": [3.14, 42, 1.2345]}
    assert source["visitorId"] == "visitor0"
    assert "eventTime" not in source


@pytest.mark.parametrize(
    ("event_type", "native_type"),
    [("add-to-cart", EventType.ADD_TO_CART), ("remove-from-cart", EventType.REMOVE_FROM_CART)],
)
def test_retail_cart_events_map_to_cart_events(event_type: str, native_type: EventType) -> None:
    raw, event = _only(
        "google_retail", _retail(event_type, cartId="cart-1", productDetails=[JEANS])
    )

    assert event.type is native_type
    assert event.member_id == "user-1"
    assert event.session_id == "session-1"
    assert event.item_id == "GGCOGAEC100616"
    assert _lines(event) == [("GGCOGAEC100616", 2, 49.5, "Apparel > Jeans")]
    assert event.currency == "USD"
    assert raw["timestamp"] == "2024-03-01T15:30:00Z"


def test_retail_purchase_complete_maps_to_a_purchase() -> None:
    socks = {"product": {"id": "GGOEGAAX0037", "priceInfo": {"price": 4.0}}, "quantity": 3}
    transaction = {
        "id": "order-9",
        "revenue": 111.0,
        "tax": 8.5,
        "cost": 60.0,
        "currencyCode": "EUR",
    }
    body = _retail(
        "purchase-complete", productDetails=[JEANS, socks], purchaseTransaction=transaction
    )

    raw, event = _only("google_retail", body)

    assert event.type is EventType.PURCHASE
    assert event.order_id == "order-9"
    assert event.revenue == 111.0
    assert event.currency == "EUR"  # the transaction's currency before the items'
    assert _lines(event) == [
        ("GGCOGAEC100616", 2, 49.5, "Apparel > Jeans"),
        ("GGOEGAAX0037", 3, 4.0, None),
    ]
    assert event.item_id is None
    assert raw["context"]["source"]["purchaseTransaction"]["tax"] == 8.5


def test_retail_search_maps_to_a_search_and_a_browse_is_ignored() -> None:
    _, event = _only("google_retail", _retail("search", searchQuery="blue jeans"))
    assert event.type is EventType.SEARCH
    assert event.query == "blue jeans"

    browse = _retail("search", pageCategories=["Apparel > Jeans"])
    [result] = translate("google_retail", _body(browse))
    assert result.ignored == "search"


def test_retail_sample_import_file_maps_line_by_line() -> None:
    results = translate("google_retail", SAMPLE_EVENTS_FILE)

    assert [result.index for result in results] == [0, 1, 2, 3]
    assert results[0].ignored == "home-page-view"  # no item: nothing a native view can name
    assert results[1].ignored == "invalid"
    [search] = _all_parse(results[2:3])
    assert search.type is EventType.SEARCH
    assert search.query == "SocksUnlimited teenagers black socks"
    assert search.member_id == "bjbs_group1_visitor1"
    assert search.timestamp.isoformat() == "2022-02-23T10:27:42+00:00"
    assert results[3].error == "productDetails must be a list"


def test_retail_page_views_without_products_are_ignored() -> None:
    for event_type in ("home-page-view", "category-page-view", "shopping-cart-page-view"):
        [result] = translate("google_retail", _body(_retail(event_type)))
        assert result.ignored == event_type
        assert result.events == [] and result.error is None


def test_retail_inline_import_bodies_are_read() -> None:
    events = [WRITE_DETAIL_PAGE_VIEW, _retail("add-to-cart", productDetails=[JEANS])]
    inline = {"userEvents": events}
    request = {"inputConfig": {"userEventInlineSource": inline}}

    for body in (inline, request, events):
        results = translate("google_retail", _body(body))
        assert [event.type for event in _all_parse(results)] == [
            EventType.VIEW,
            EventType.ADD_TO_CART,
        ]


def test_retail_visitor_is_the_member_without_a_user_id() -> None:
    body = _retail("add-to-cart", productDetails=[JEANS])
    del body["userInfo"]

    _, event = _only("google_retail", body)

    assert event.member_id == "visitor-1"


def test_retail_recommendations_ai_v1beta_layout_is_read() -> None:
    body = {
        "eventType": "purchase-complete",
        "userInfo": {"visitorId": "645951754.1609442302"},
        "productEventDetail": {
            "cartId": "cart-7",
            "productDetails": [{"id": "6158282784966", "displayPrice": 12.0, "quantity": 2}],
            "purchaseTransaction": {"id": "1001", "revenue": "24.00", "currencyCode": "usd"},
        },
    }

    _, event = _only("google_retail", body)

    assert event.member_id == "645951754.1609442302"
    assert _lines(event) == [("6158282784966", 2, 12.0, None)]
    assert (event.order_id, event.revenue, event.currency) == ("1001", 24.0, "USD")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {
                k: v
                for k, v in _retail("add-to-cart", productDetails=[JEANS]).items()
                if k not in ("visitorId", "userInfo")
            },
            "add-to-cart: a UserEvent needs a visitorId (or userInfo.userId)",
        ),
        (
            _retail("detail-page-view"),
            "detail-page-view needs productDetails, each with a product.id",
        ),
        (
            _retail("purchase-complete", productDetails=[{"product": {"title": "Jeans"}}]),
            "purchase-complete: productDetails[0].product.id is missing",
        ),
        (
            _retail("add-to-cart", productDetails=[{**JEANS, "quantity": -1}]),
            "productDetails[0].quantity must be a whole number of at least 1, got -1",
        ),
        (
            _retail("add-to-cart", productDetails=[JEANS], eventTime="yesterday"),
            "eventTime 'yesterday' is not an ISO 8601 date-time",
        ),
        ({"visitorId": "visitor-1"}, "a UserEvent needs an eventType"),
    ],
)
def test_retail_events_that_cannot_be_mapped_say_why(body: dict[str, Any], reason: str) -> None:
    [result] = translate("google_retail", _body(body))

    assert result.error == reason
    assert result.events == []


def test_retail_ids_are_deterministic_and_twins_stay_apart() -> None:
    body = _body({"userEvents": [WRITE_DETAIL_PAGE_VIEW, WRITE_DETAIL_PAGE_VIEW]})

    first = [event.event_id for event in _all_parse(translate("google_retail", body))]
    again = [event.event_id for event in _all_parse(translate("google_retail", body))]

    assert first == again
    assert len(set(first)) == 2
    later = {**WRITE_DETAIL_PAGE_VIEW, "eventTime": "2020-01-01T03:33:34Z"}
    assert _only("google_retail", later)[1].event_id not in first


def test_retail_ndjson_line_that_is_not_json_is_that_events_error() -> None:
    body = SAMPLE_EVENTS_FILE + b"{not json\n"

    results = translate("google_retail", body)

    assert len(results) == 5
    assert (results[4].error or "").startswith("line 5 is not valid JSON")


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def test_formats_are_the_four_supported() -> None:
    assert FORMATS == ("native", "segment", "ga4", "google_retail")


def test_native_events_pass_through_unchanged() -> None:
    event = {"event_id": "e-1", "type": "view", "member_id": "m-1", "item_id": "sku-1"}
    bad = {"type": "view"}

    [single] = translate("native", _body(event))
    batch = translate("native", _body({"events": [event, bad, 7]}))
    default = translate("", _body(event))

    assert single == Translated(0, "e-1", [event])
    assert default == [single]
    assert batch[0] == single
    assert batch[1] == Translated(1, "", [bad])  # validation happens later, in ingestion
    assert batch[2].error == "an event must be a JSON object, got int"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", [b"", b"{not json", b"\xff\xfe\x00garbage"])
def test_an_unreadable_body_is_a_value_error(fmt: str, payload: bytes) -> None:
    with pytest.raises(ValueError, match="body"):
        translate(fmt, payload)


def test_an_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown event format 'snowplow'; supported: native"):
        translate("snowplow", b"{}")


def test_format_names_are_matched_loosely() -> None:
    assert translate("Google-Retail", _body(_retail("search", searchQuery="q")))[0].events
    assert translate("SEGMENT", _body(COMPLETE_TRACK))[0].ignored == "Course Clicked"


def test_full_refunds_without_items_refund_the_order_amount() -> None:
    _, segment = _only(
        "segment",
        json.dumps(
            {
                "type": "track",
                "event": "Order Refunded",
                "userId": "u-1",
                "messageId": "m-full-refund",
                "properties": {"order_id": "o-1", "total": -30.0, "currency": "usd"},
            }
        ).encode(),
    )
    assert (segment.type, segment.order_id, segment.revenue, segment.items) == (
        "refund",
        "o-1",
        30.0,
        [],
    )
    _, ga4 = _only("ga4", _mp(("refund", {k: v for k, v in REFUND.items() if k != "items"})))
    assert ga4.type == "refund" and ga4.items == [] and ga4.revenue == abs(REFUND["value"])


# --- identity: links and consent ---------------------------------------------------------


def _identities(fmt: str, body: Any) -> list[Identity | None]:
    return [result.identity for result in translate(fmt, _body(body))]


def test_segment_calls_with_a_user_and_an_anonymous_id_link_them_whatever_their_type() -> None:
    calls = [
        {"type": "identify", "userId": "u-1", "anonymousId": "a-1"},
        {"type": "alias", "userId": "u-1", "previousId": "old-1"},
        {"type": "page", "userId": "u-1", "anonymousId": "a-2", "name": "Home"},
        {"type": "track", "event": "Custom Thing", "userId": "u-1", "anonymousId": "a-3"},
        {"type": "identify", "userId": "u-2"},  # nothing to link
        {"type": "identify", "anonymousId": "a-4"},
        {"type": "identify", "userId": "u-3", "anonymousId": "u-3"},  # the same id
    ]

    found = _identities("segment", calls)

    assert found == [
        Identity("u-1", ("a-1",)),
        Identity("u-1", ("old-1",)),
        Identity("u-1", ("a-2",)),
        Identity("u-1", ("a-3",)),
        None,
        None,
        None,
    ]


def test_segment_consent_is_read_from_the_message_or_the_batch_context() -> None:
    preferences = {"categoryPreferences": {"Personalisation": False, "On-Site Messaging": True}}
    batch = {
        "batch": [
            {"type": "identify", "userId": "u-1"},
            {
                "type": "identify",
                "userId": "u-2",
                "context": {"consent": {"categoryPreferences": {"PUSH": True}}},
            },
        ],
        "context": {"consent": preferences},
    }

    found = _identities("segment", batch)

    assert found == [
        Identity("u-1", (), {"personalization": False, "onsite": True}),
        Identity("u-2", (), {"push": True}),
    ]


def test_ga4_ids_link_from_the_body_or_from_the_params_of_a_bare_event() -> None:
    bare = [{"name": "page_view", "params": {"user_id": "u-1", "client_id": "c-1"}}]
    app = {"app_instance_id": "app-1", "user_id": "u-2", "events": [{"name": "screen_view"}]}

    assert _identities("ga4", bare) == [Identity("u-1", ("c-1",))]
    assert _identities("ga4", app) == [Identity("u-2", ("app-1",))]
    assert _identities("ga4", {"client_id": "c-1", "events": [{"name": "x"}]}) == [None]


def test_ga4_consent_states_are_read_in_any_case() -> None:
    body = {
        "client_id": "c-1",
        "consent": {"ad_personalization": "granted"},
        "events": [{"name": "page_view"}],
    }

    assert _identities("ga4", body) == [Identity("c-1", (), {"personalization": True})]


def test_retail_user_and_visitor_link_in_the_current_and_the_legacy_layout() -> None:
    current = {"eventType": "home-page-view", "visitorId": "v-1", "userInfo": {"userId": "u-1"}}
    legacy = {"eventType": "detail-page-view", "userInfo": {"visitorId": "v-2", "userId": "u-2"}}
    anonymous = {"eventType": "home-page-view", "visitorId": "v-3"}

    found = _identities("google_retail", [current, legacy, anonymous])

    assert found == [Identity("u-1", ("v-1",)), Identity("u-2", ("v-2",)), None]


# --- a sender's clock, corrected as Segment corrects it -------------------------------

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _received(body: Any) -> list[Translated]:
    return translate_body("segment", read("segment", _body(body)), RECEIVED)


def test_a_segment_sender_two_hours_fast_has_its_events_dated_by_ingestions_clock() -> None:
    # Viewed 5 minutes before the batch was sent, both by a clock 2 hours fast.
    track = _track("Product Viewed", MONOPOLY, timestamp="2026-11-22T13:55:00Z")
    [result] = _received({"batch": [track], "sentAt": "2026-11-22T14:00:00Z"})
    assert result.events[0]["timestamp"] == "2026-11-22T11:55:00Z"


def test_a_messages_own_sent_at_wins_over_its_batchs() -> None:
    track = _track(
        "Product Viewed", MONOPOLY, timestamp="2026-11-22T09:00:00Z", sentAt="2026-11-22T09:00:30Z"
    )
    [result] = _received({"batch": [track], "sentAt": "2026-11-22T14:00:00Z"})
    assert result.events[0]["timestamp"] == "2026-11-22T11:59:30Z"


def test_links_are_dated_with_the_same_correction() -> None:
    identify = {
        "type": "identify",
        "userId": "u-1",
        "anonymousId": "a-1",
        "timestamp": "2026-11-22T13:59:00Z",
    }
    [result] = _received({"batch": [identify], "sentAt": "2026-11-22T14:00:00Z"})
    assert result.identity is not None
    assert result.identity.timestamp == "2026-11-22T11:59:00Z"


@pytest.mark.parametrize("sent_at", [None, "not a date", 42])
def test_without_a_readable_sent_at_the_senders_timestamp_stands(sent_at: Any) -> None:
    track = _track("Product Viewed", MONOPOLY, timestamp="2026-11-22T09:00:00Z")
    body: dict[str, Any] = {"batch": [track]}
    if sent_at is not None:
        body["sentAt"] = sent_at
    [result] = _received(body)
    assert result.events[0]["timestamp"] == "2026-11-22T09:00:00Z"


def test_what_a_format_says_about_the_person_is_not_kept() -> None:
    track = _track(
        "Product Viewed",
        MONOPOLY,
        context={"traits": {"name": "Jake Peterson", "street": "1 Main St"}, "locale": "en-GB"},
        traits={"birthday": "1990-01-01"},
    )
    raw, _ = _only("segment", track)
    source = raw["context"]["source"]
    assert "Jake" not in json.dumps(raw) and "Main St" not in json.dumps(raw)
    assert "1990" not in json.dumps(raw)
    assert source["context"] == {"locale": "en-GB"}  # the rest of the context is kept

    ga4 = {
        "client_id": "c-1",
        "user_data": {"address": [{"first_name": "Jake", "city": "Leeds"}]},
        "user_properties": {"customer_tier": {"value": "premium"}},
        "events": [{"name": "view_item", "params": {"items": [{"item_id": "85123A"}]}}],
    }
    raw, _ = _only("ga4", ga4)
    assert "Leeds" not in json.dumps(raw)
    assert raw["context"]["source"]["user_properties"] == {"customer_tier": {"value": "premium"}}
