"""Segment e-commerce v2 track events -> native events.

Specs:
- https://segment.com/docs/connections/spec/ecommerce/v2/ (event names and properties)
- https://segment.com/docs/connections/spec/track/ (the track message)
- https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/ (bodies)

Bodies accepted:
- one message, as POSTed to `/v1/track` (or `/v1/identify`, `/v1/page`, ...): `{"userId" |
  "anonymousId", "event", "properties", "context", "timestamp", "messageId", ...}`; a message
  without `type` is a track when it has `event` (the type is then told by the endpoint);
- `/v1/batch`: `{"batch": [messages...], "context": {...}, "integrations": {...}}`; the batch
  `context` and `integrations` are merged under each message's own (the message wins);
- a bare JSON list of messages.

Mapping (names match ignoring case, spaces and underscores; e-commerce v1 aliases accepted):

| Segment track event                          | native             |
|----------------------------------------------|--------------------|
| Product Viewed (Viewed Product)              | view               |
| Product Clicked (Clicked Product)            | click              |
| Product Added (Added Product)                | add_to_cart        |
| Wishlist Product Added to Cart               | add_to_cart        |
| Product Removed (Removed Product)            | remove_from_cart   |
| Product Added to Wishlist                    | wishlist           |
| Product Reviewed                             | rate (`rating`)    |
| Order Completed (Completed Order)            | purchase           |
| Order Refunded                               | refund             |
| Products Searched (Searched Products)        | search             |
| Product List Viewed / Filtered               | impression (*)     |

(*) only when every listed product has an id; otherwise the event is ignored.

- item: `product_id`, else `sku`; `quantity` (absent = 1), `price`, `category`. Single-product
  events also set `item_id`.
- purchase / refund: `order_id`; `revenue` = `revenue`, else `total`; `currency` upper-cased.
  A refund's `revenue` is the amount refunded, always positive. An Order Refunded without
  `products` is a full refund of the order for `revenue`/`total`; with neither, an error.
- `recommendation_id`: `properties.recommendation_id` when present.
- `member_id`: `userId`, else `anonymousId`; neither is an error.
- `timestamp`: `timestamp`, else `originalTimestamp`; absent stays absent (ingestion stamps it).
  With a `sentAt` (the message's, else the batch's) it is corrected for the sender's clock
  as Segment corrects it: received - (sentAt - timestamp).
- `event_id`: `seg-<messageId>`; without a messageId, `seg-` + a hash of the canonical message.
- `context.source`: the message's `properties` (whole), merged `context`, `integrations`,
  `anonymousId`, `sentAt`, ... : everything but the mapped ids, `type`, the `writeKey` (a
  credential, never stored) and the person's `traits` (name, address, ...: not kept,
  `common.PERSONAL_DETAILS`).

Identity (`Translated.identity`, of every message whatever its type, docs/identity.md):
- links: `anonymousId` -> `userId` when a message has both, and an alias's `previousId` ->
  `userId`;
- consent: Consent Management's `context.consent.categoryPreferences` (the message's context
  over the batch's), category name -> true/false. Names are compared ignoring case, spaces,
  `-` and `_`: `personalization`/`personalisation` -> personalization; `email`, `e-mail`,
  `email marketing` -> email; `sms`, `sms marketing` -> sms; `push`, `push notifications` ->
  push; `onsite`, `on-site`, `onsite messaging` -> onsite. Other categories (Advertising,
  Analytics, ...) and values that are not booleans are left alone; when two names of one
  key disagree, the denial wins. The consent is the member's (`userId`, else `anonymousId`).

Ignored on purpose (`Translated.ignored`): identify, page, screen, group, alias messages (named
by their type; their links and consent are still taken), and every other track event (Cart
Viewed, Checkout Started/Step Viewed/Step Completed, Payment Info Entered, Order Updated, Order
Cancelled, Promotion Viewed/Clicked, Coupon *, Product Removed from Wishlist, Product/Cart
Shared, custom events, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from services.ingestion.formats.common import (
    EVENT_FAILURES,
    Identity,
    IdMinter,
    MappingError,
    Translated,
    canonical_json,
    category,
    compact,
    currency,
    decode_json,
    entry_count,
    failed,
    identity_of,
    iso_timestamp,
    line,
    number,
    object_or_empty,
    prefixed_id,
    price,
    quantity,
    single_item_id,
    source_context,
    text,
    utc_text,
)

SPEC_URL = "https://segment.com/docs/connections/spec/ecommerce/v2/"

_PRODUCT_EVENTS = {
    "product viewed": "view",
    "viewed product": "view",
    "product clicked": "click",
    "clicked product": "click",
    "product added": "add_to_cart",
    "added product": "add_to_cart",
    "wishlist product added to cart": "add_to_cart",
    "product removed": "remove_from_cart",
    "removed product": "remove_from_cart",
    "product added to wishlist": "wishlist",
    "product reviewed": "rate",
}
_ORDER_EVENTS = {
    "order completed": "purchase",
    "completed order": "purchase",
    "order refunded": "refund",
}
_SEARCH_EVENTS = frozenset({"products searched", "searched products"})
_LIST_EVENTS = frozenset(
    {"product list viewed", "product list filtered", "viewed product category"}
)

# Consent Management categories (names compared ignoring case, spaces, "-" and "_") ->
# consent keys. A workspace names its categories itself; these are the usual spellings.
_CONSENT_CATEGORIES = {
    "personalization": "personalization",
    "personalisation": "personalization",
    "email": "email",
    "e mail": "email",
    "email marketing": "email",
    "sms": "sms",
    "sms marketing": "sms",
    "push": "push",
    "push notifications": "push",
    "onsite": "onsite",
    "on site": "onsite",
    "onsite messaging": "onsite",
    "on site messaging": "onsite",
}

_KNOWN = frozenset(_PRODUCT_EVENTS) | frozenset(_ORDER_EVENTS) | _SEARCH_EVENTS | _LIST_EVENTS
# Top-level message keys re-expressed by native fields, or never to be stored.
_NOT_KEPT = frozenset(
    {"type", "event", "userId", "messageId", "timestamp", "writeKey", "properties", "context"}
)


def read(payload: bytes) -> Any:
    """The decoded body (see `translate`)."""
    return decode_json(payload)


def count(payload: bytes) -> int | None:
    """How many messages `payload` holds, without decoding them (as `translate` finds them)."""
    return entry_count(payload, ("batch",))


def translate(body: Any, received: datetime | None = None) -> list[Translated]:
    """The source events of a Segment body; with `received` (when ingestion took it), their
    times corrected for the sender's clock as Segment corrects them (`_Skew`)."""
    shared_context: dict[str, Any] = {}
    shared_integrations: dict[str, Any] = {}
    batch_sent: Any = None
    if isinstance(body, dict) and "batch" in body:
        messages = body["batch"]
        if not isinstance(messages, list):
            raise ValueError("'batch' must be a list of messages")
        shared_context = _shared(body, "context")
        shared_integrations = _shared(body, "integrations")
        batch_sent = body.get("sentAt")
    elif isinstance(body, dict):
        messages = [body]
    elif isinstance(body, list):
        messages = body
    else:
        raise ValueError(
            'a Segment body must be a message object, {"batch": [...]} or a list of messages'
        )
    minter = IdMinter("seg")
    results = []
    for index, message in enumerate(messages):
        skew = _Skew.of(message, batch_sent, received)
        result = _translate_message(
            index, message, shared_context, shared_integrations, minter, skew
        )
        found = _identity(message, shared_context, skew)
        results.append(replace(result, identity=found) if found else result)
    return results


@dataclass(frozen=True)
class _Skew:
    """How far the sender's clock is off, as Segment reckons it: the message (or its batch)
    says when it was sent (`sentAt`) by the same clock that dated the event, so the event
    happened `sentAt - timestamp` before ingestion received it. A device clock two hours
    fast would otherwise date its events in the future, where they are refused.
    """

    offset: timedelta = timedelta()

    @classmethod
    def of(cls, message: Any, batch_sent: Any, received: datetime | None) -> _Skew:
        sent = message.get("sentAt", batch_sent) if isinstance(message, dict) else batch_sent
        if received is None or sent is None:
            return cls()
        try:
            sent_text = iso_timestamp(sent, "sentAt")
        except EVENT_FAILURES:
            return cls()  # a sentAt that cannot be read corrects nothing
        if sent_text is None:
            return cls()
        return cls(received - datetime.fromisoformat(sent_text))

    def corrected(self, timestamp: str | None) -> str | None:
        if timestamp is None or not self.offset:
            return timestamp
        try:
            return utc_text(datetime.fromisoformat(timestamp) + self.offset)
        except OverflowError:
            return timestamp  # past what a date holds: refused as out of bounds later


def _shared(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"the batch '{key}' must be an object")
    return value


def _translate_message(
    index: int,
    message: Any,
    shared_context: dict[str, Any],
    shared_integrations: dict[str, Any],
    minter: IdMinter,
    skew: _Skew,
) -> Translated:
    if not isinstance(message, dict):
        return Translated(index, "", [], error="a Segment message must be a JSON object")
    source_id = ""
    try:
        source_id = text(message.get("messageId"), "messageId") or ""
        kind = _message_type(message)
        if kind != "track":
            return Translated(index, source_id, [], ignored=kind)
        name = text(message.get("event"), "event")
        if name is None:
            raise MappingError("a track message needs 'event'")
        key = _normalise(name)
        if key not in _KNOWN:
            return Translated(index, source_id, [], ignored=name)
        properties = object_or_empty(message.get("properties"), "properties")
        fields = _fields(key, name, properties)
        if fields is None:
            return Translated(index, source_id, [], ignored=name)
        member_id = text(message.get("userId"), "userId") or text(
            message.get("anonymousId"), "anonymousId"
        )
        if member_id is None:
            raise MappingError(f"{name}: the message has neither userId nor anonymousId")
        timestamp = iso_timestamp(message.get("timestamp"), "timestamp")
        if timestamp is None:
            timestamp = iso_timestamp(message.get("originalTimestamp"), "originalTimestamp")
        timestamp = skew.corrected(timestamp)
        event_id = prefixed_id("seg", source_id) if source_id else minter.mint(message)
        event = {
            "event_id": event_id,
            "member_id": member_id,
            **fields,
            "timestamp": timestamp,
            "context": _context(message, name, properties, shared_context, shared_integrations),
        }
        return Translated(index, source_id, [compact(event)])
    except EVENT_FAILURES as exc:
        return failed(index, source_id, exc)


def _identity(message: Any, shared_context: dict[str, Any], skew: _Skew) -> Identity | None:
    """The links and consent of any message (track, identify, alias, page, ...)."""
    if not isinstance(message, dict):
        return None
    try:
        user_id = text(message.get("userId"), "userId")
        anonymous_id = text(message.get("anonymousId"), "anonymousId")
        previous_id = text(message.get("previousId"), "previousId")
        own_context = object_or_empty(message.get("context"), "context")
    except EVENT_FAILURES:
        return None
    consent = _consent({**shared_context, **own_context})
    try:
        timestamp = skew.corrected(
            iso_timestamp(message.get("timestamp"), "timestamp")
            or iso_timestamp(message.get("originalTimestamp"), "originalTimestamp")
        )
    except EVENT_FAILURES:
        timestamp = None  # the link still holds; ingestion dates it itself
    if user_id is None:
        return identity_of(anonymous_id, (), consent, timestamp)
    return identity_of(user_id, (previous_id, anonymous_id), consent, timestamp)


def _consent(context: dict[str, Any]) -> dict[str, bool]:
    """Consent Management's `context.consent.categoryPreferences`, on recofleet's keys.

    Several categories may name one key ("Email", "Email Marketing"): a denial wins.
    """
    consent = context.get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(preferences, dict):
        return {}
    changes: dict[str, bool] = {}
    for name, allowed in preferences.items():
        key = _CONSENT_CATEGORIES.get(_category_name(str(name)))
        if key is not None and isinstance(allowed, bool):
            changes[key] = changes.get(key, True) and allowed
    return changes


def _category_name(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def _message_type(message: dict[str, Any]) -> str:
    """The message's type; a body POSTed to /v1/<type> may leave it out."""
    declared = text(message.get("type"), "type")
    if declared is not None:
        return declared.lower()
    if "event" in message:
        return "track"
    for key, kind in (("previousId", "alias"), ("groupId", "group"), ("traits", "identify")):
        if key in message:
            return kind
    if "name" in message:
        return "page"
    raise MappingError("a Segment message needs 'type' or, for a track, 'event'")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name).strip().lower()


def _fields(key: str, name: str, properties: dict[str, Any]) -> dict[str, Any] | None:
    """The native fields of one known event, or None when it is ignored after all."""
    if key in _SEARCH_EVENTS:
        return {"type": "search", "query": _query(name, properties.get("query"))}
    if key in _LIST_EVENTS:
        items = _listed(properties.get("products"))
        if items is None:
            return None
        return compact(
            {
                "type": "impression",
                "items": items,
                "recommendation_id": _recommendation(properties),
            }
        )
    if key in _ORDER_EVENTS:
        return _order(_ORDER_EVENTS[key], name, properties)
    native_type = _PRODUCT_EVENTS[key]
    items = [_product(properties, f"{name} needs properties.product_id or sku", "properties")]
    fields: dict[str, Any] = {
        "type": native_type,
        "item_id": single_item_id(native_type, items),
        "items": items,
        "currency": currency(properties.get("currency"), "properties.currency"),
        "recommendation_id": _recommendation(properties),
    }
    if native_type == "rate":
        rating = number(properties.get("rating"), "properties.rating")
        if rating is None:
            raise MappingError(f"{name} needs properties.rating")
        fields["rating"] = rating
    return compact(fields)


def _order(native_type: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    revenue = number(properties.get("revenue"), "properties.revenue")
    if revenue is None:
        revenue = number(properties.get("total"), "properties.total")
    if revenue is not None and native_type == "refund":
        revenue = abs(revenue)  # the amount refunded, whatever sign the shop used
    products = properties.get("products")
    full_refund = native_type == "refund" and products in (None, []) and revenue is not None
    if products in (None, []) and not full_refund:
        raise MappingError(
            f"{name} needs properties.products"
            + (", or the amount refunded (revenue or total)" if native_type == "refund" else "")
            + f": a native {native_type} names its items"
        )
    items = None if full_refund else _products(name, products)
    return compact(
        {
            "type": native_type,
            "items": items,
            "order_id": text(properties.get("order_id"), "properties.order_id"),
            "revenue": revenue,
            "currency": currency(properties.get("currency"), "properties.currency"),
            "recommendation_id": _recommendation(properties),
        }
    )


def _products(name: str, products: Any) -> list[dict[str, Any]]:
    if not isinstance(products, list):
        raise MappingError("properties.products must be a list")
    return [
        _product(
            product,
            f"{name}: properties.products[{position}] needs product_id or sku",
            f"properties.products[{position}]",
        )
        for position, product in enumerate(products)
    ]


def _product(product: Any, missing: str, where: str) -> dict[str, Any]:
    if not isinstance(product, dict):
        raise MappingError(f"{where} must be an object")
    item_id = text(product.get("product_id"), f"{where}.product_id") or text(
        product.get("sku"), f"{where}.sku"
    )
    if item_id is None:
        raise MappingError(missing)
    return line(
        item_id,
        quantity(product.get("quantity"), f"{where}.quantity"),
        price(product.get("price"), f"{where}.price"),
        category(product.get("category")),
    )


def _listed(products: Any) -> list[dict[str, Any]] | None:
    """Impression lines when every listed product is clearly identified, else None (ignore)."""
    if not isinstance(products, list) or not products:
        return None
    items = []
    for position, product in enumerate(products):
        if not isinstance(product, dict):
            return None
        try:
            items.append(_product(product, "", f"properties.products[{position}]"))
        except MappingError:
            return None
    return items


def _query(name: str, value: Any) -> str:
    # The spec allows `query` to be a String or an Object; an object is kept as its JSON text.
    query = canonical_json(value) if isinstance(value, dict | list) else text(value, "query")
    if not query:
        raise MappingError(f"{name} needs properties.query")
    return query


def _recommendation(properties: dict[str, Any]) -> str | None:
    return text(properties.get("recommendation_id"), "properties.recommendation_id")


def _context(
    message: dict[str, Any],
    name: str,
    properties: dict[str, Any],
    shared_context: dict[str, Any],
    shared_integrations: dict[str, Any],
) -> dict[str, Any]:
    own_context = object_or_empty(message.get("context"), "context")
    kept = {key: value for key, value in message.items() if key not in _NOT_KEPT}
    if shared_integrations:
        own = object_or_empty(message.get("integrations"), "integrations")
        kept["integrations"] = {**shared_integrations, **own}
    return source_context(
        "segment",
        {
            "event": name,
            "properties": properties or None,
            "context": {**shared_context, **own_context} or None,
            **kept,
        },
    )
