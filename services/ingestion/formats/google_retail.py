"""Google Cloud Retail (Vertex AI Search for commerce) user events -> native events.

Specs:
- https://cloud.google.com/retail/docs/reference/rest/v2/projects.locations.catalogs.userEvents
  (the UserEvent object)
- https://cloud.google.com/retail/docs/user-events (the user event types)
- https://cloud.google.com/retail/docs/import-user-events (inline and Cloud Storage imports)

Bodies accepted:
- one UserEvent, as sent to `userEvents:write`;
- `{"userEvents": [...]}`, the inline import source, also inside its request
  `{"inputConfig": {"userEventInlineSource": {"userEvents": [...]}}}`;
- a bare JSON list of UserEvents;
- newline-delimited UserEvents (the Cloud Storage import file format): one per line, a line
  that is not JSON is that event's error. A line ends at "\n" (a "\r" before it is JSON
  whitespace); U+2028, U+2029, U+0085 and the like are characters of a string, as in JSON.

Mapping:

| Retail eventType      | native                                                   |
|-----------------------|----------------------------------------------------------|
| detail-page-view      | view                                                     |
| add-to-cart           | add_to_cart                                              |
| remove-from-cart      | remove_from_cart                                         |
| purchase-complete     | purchase (`purchaseTransaction.id/revenue/currencyCode`) |
| search (searchQuery)  | search                                                   |

- item: `productDetails[].product.id` (required), `quantity` (absent = 1),
  `product.priceInfo.price`, the first of `product.categories`. Single-product events also set
  `item_id`. `currency`: `purchaseTransaction.currencyCode`, else the first
  `priceInfo.currencyCode`.
- `member_id`: `userInfo.userId` when present (the shop's member), else `visitorId`.
- identity (`Translated.identity`, of every event whatever its type): `visitorId` (or the
  legacy `userInfo.visitorId`) -> `userInfo.userId` when both are set. No consent: Retail
  user events carry none.
- `session_id`: `sessionId`. `timestamp`: `eventTime`; absent stays absent.
- `recommendation_id`: never set (`attributionToken` belongs to Google's serving, not ours;
  it is kept in the source context).
- `event_id`: user events carry no id, so `gcr-` + sha256 of the canonical JSON of the whole
  event[:32]: a retried delivery gets the same id.
- `context.source`: the whole event (`attributes`, `productDetails`, `uri`,
  `attributionToken`, ...) except `eventTime`, which is the native `timestamp`, and the
  person's `userInfo` (IP address, user agent: not kept once its ids are mapped,
  `common.PERSONAL_DETAILS`).
- The older Recommendations AI (v1beta) layout is read too: `userInfo.visitorId` and
  `productEventDetail.{productDetails[].id, purchaseTransaction, searchQuery}`.

Ignored on purpose: `home-page-view`, `category-page-view` and `shopping-cart-page-view` name
no product (a native `view` needs an item, and the cart's contents are known from its
add/remove events); a `search` without `searchQuery` (a category browse: native searches need a
query); any other event type.
"""

from __future__ import annotations

import codecs
from dataclasses import replace
from typing import Any

from services.ingestion.formats.common import (
    EVENT_FAILURES,
    Identity,
    IdMinter,
    MappingError,
    Translated,
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
    price,
    quantity,
    single_item_id,
    source_context,
    text,
)

SPEC_URL = (
    "https://cloud.google.com/retail/docs/reference/rest/v2/projects.locations.catalogs.userEvents"
)

_ITEM_EVENTS = {
    "detail-page-view": "view",
    "add-to-cart": "add_to_cart",
    "remove-from-cart": "remove_from_cart",
    "purchase-complete": "purchase",
}


# Where `_split` finds the events of an object: in an import request, in its source, or
# under `userEvents`; an object with none of these is one UserEvent.
_PATHS = (
    ("inputConfig", "userEventInlineSource", "userEvents"),
    ("userEventInlineSource", "userEvents"),
    ("userEvents",),
)
# The whitespace JSON has besides "\n": a line of only these is blank. (`str.strip()` would
# also take U+2028, U+0085 and the like, which are no JSON whitespace.)
_BLANK = b" \t\r"


class _Unreadable:
    """A line of a newline-delimited body that is not JSON."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def read(payload: bytes) -> Any:
    """The decoded body: one JSON value, or the list of the lines of a JSON-lines body."""
    try:
        return decode_json(payload)
    except ValueError:
        lines = _ndjson(payload)
        if lines is None:
            raise
        return lines


def count(payload: bytes) -> int | None:
    """How many UserEvents `payload` holds, without decoding them: counted on the outline of
    a JSON body, else one per line of a JSON-lines body (as `read` would take it)."""
    found = entry_count(payload, *_PATHS)
    return found if found is not None else _line_count(payload)


def _line_count(payload: bytes) -> int | None:
    """The lines of a JSON-lines body as `_ndjson` takes them; None when it takes none."""
    rows = _rows(payload)
    if len(rows) < 2:
        return None
    try:
        decode_json(rows[0][1])
    except ValueError:
        return None  # the first line is not JSON either: `read` refuses the body
    return len(rows)


def _rows(payload: bytes) -> list[tuple[int, bytes]]:
    """The lines of a JSON-lines body that are not blank, with their numbers. Split on "\n"
    alone (which no other UTF-8 character's bytes hold): `splitlines()` would also cut a
    string value at a U+2028."""
    lines = payload.removeprefix(codecs.BOM_UTF8).split(b"\n")
    return [(n, row) for n, row in enumerate(lines, start=1) if row.strip(_BLANK)]


def translate(body: Any) -> list[Translated]:
    events = _split(body)
    minter = IdMinter("gcr")
    results = []
    for index, event in enumerate(events):
        result = _translate_event(index, event, minter)
        found = _identity(event)
        results.append(replace(result, identity=found) if found else result)
    return results


def _identity(event: Any) -> Identity | None:
    """The link of a signed-in visitor (`visitorId` and `userInfo.userId`), whatever the
    event type: a home-page-view links as well as a purchase. Retail carries no consent."""
    if not isinstance(event, dict):
        return None
    try:
        user_info = object_or_empty(event.get("userInfo"), "userInfo")
        user_id = text(user_info.get("userId"), "userInfo.userId")
        visitor_id = text(event.get("visitorId"), "visitorId") or text(
            user_info.get("visitorId"), "userInfo.visitorId"
        )
    except EVENT_FAILURES:
        return None
    try:
        timestamp = iso_timestamp(event.get("eventTime"), "eventTime")
    except EVENT_FAILURES:
        timestamp = None
    return identity_of(user_id, (visitor_id,), {}, timestamp)


def _split(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if not isinstance(body, dict):
        raise ValueError(
            'a Google Retail body must be a UserEvent, {"userEvents": [...]}, a list of '
            "UserEvents or one UserEvent per line"
        )
    if "inputConfig" in body:
        body = _member(_member(body, "inputConfig"), "userEventInlineSource")
    elif "userEventInlineSource" in body:
        body = _member(body, "userEventInlineSource")
    if "userEvents" in body:
        events = body["userEvents"]
        if not isinstance(events, list):
            raise ValueError("'userEvents' must be a list of UserEvents")
        return events
    return [body]


def _member(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"'{key}' must be an object")
    return value


def _ndjson(payload: bytes) -> list[Any] | None:
    """The events of a newline-delimited body, or None when the body is not one."""
    try:
        payload.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    lines = _rows(payload)
    if len(lines) < 2:
        return None
    events: list[Any] = []
    for number_, row in lines:
        try:
            events.append(decode_json(row))
        except ValueError as exc:
            if not events:
                return None  # the first line is not JSON either: not a newline-delimited body
            reason = str(exc).removeprefix("body is not valid JSON: ")
            events.append(_Unreadable(f"line {number_} is not valid JSON: {reason}"))
    return events


def _translate_event(index: int, event: Any, minter: IdMinter) -> Translated:
    if isinstance(event, _Unreadable):
        return Translated(index, "", [], error=event.reason)
    if not isinstance(event, dict):
        return Translated(index, "", [], error="a UserEvent must be a JSON object")
    try:
        event_type = text(event.get("eventType"), "eventType")
        if event_type is None:
            raise MappingError("a UserEvent needs an eventType")
        legacy = object_or_empty(event.get("productEventDetail"), "productEventDetail")
        fields = _fields(event_type, event, legacy)
        if fields is None:
            return Translated(index, "", [], ignored=event_type)
        user_info = object_or_empty(event.get("userInfo"), "userInfo")
        member_id = (
            text(user_info.get("userId"), "userInfo.userId")
            or text(event.get("visitorId"), "visitorId")
            or text(user_info.get("visitorId"), "userInfo.visitorId")
        )
        if member_id is None:
            raise MappingError(f"{event_type}: a UserEvent needs a visitorId (or userInfo.userId)")
        native = {
            "event_id": minter.mint(event),
            "member_id": member_id,
            "session_id": text(event.get("sessionId"), "sessionId"),
            **fields,
            "timestamp": iso_timestamp(event.get("eventTime"), "eventTime"),
            "context": source_context(
                "google_retail", {key: value for key, value in event.items() if key != "eventTime"}
            ),
        }
        return Translated(index, "", [compact(native)])
    except EVENT_FAILURES as exc:
        return failed(index, "", exc)


def _fields(
    event_type: str, event: dict[str, Any], legacy: dict[str, Any]
) -> dict[str, Any] | None:
    """The native fields of one event, or None when its type is ignored."""
    if event_type == "search":
        query = text(_either(event, legacy, "searchQuery"), "searchQuery")
        return None if query is None else {"type": "search", "query": query}
    native_type = _ITEM_EVENTS.get(event_type)
    if native_type is None:
        return None
    items, item_currency = _lines(event_type, _either(event, legacy, "productDetails"))
    fields: dict[str, Any] = {
        "type": native_type,
        "item_id": single_item_id(native_type, items),
        "items": items,
        "currency": item_currency,
    }
    if native_type == "purchase":
        transaction = object_or_empty(
            _either(event, legacy, "purchaseTransaction"), "purchaseTransaction"
        )
        fields["order_id"] = text(transaction.get("id"), "purchaseTransaction.id")
        fields["revenue"] = number(transaction.get("revenue"), "purchaseTransaction.revenue")
        fields["currency"] = (
            currency(transaction.get("currencyCode"), "purchaseTransaction.currencyCode")
            or item_currency
        )
    return compact(fields)


def _either(event: dict[str, Any], legacy: dict[str, Any], key: str) -> Any:
    value = event.get(key)
    return legacy.get(key) if value is None else value


def _lines(event_type: str, details: Any) -> tuple[list[dict[str, Any]], str | None]:
    if details is None or details == []:
        raise MappingError(f"{event_type} needs productDetails, each with a product.id")
    if not isinstance(details, list):
        raise MappingError("productDetails must be a list")
    items = []
    currencies = []
    for position, detail in enumerate(details):
        where = f"productDetails[{position}]"
        if not isinstance(detail, dict):
            raise MappingError(f"{where} must be an object")
        product = object_or_empty(detail.get("product"), f"{where}.product")
        price_info = object_or_empty(product.get("priceInfo"), f"{where}.product.priceInfo")
        item_id = text(product.get("id"), f"{where}.product.id") or text(
            detail.get("id"), f"{where}.id"
        )
        if item_id is None:
            raise MappingError(f"{event_type}: {where}.product.id is missing")
        unit_price = price(price_info.get("price"), f"{where}.product.priceInfo.price")
        if unit_price is None:
            unit_price = price(detail.get("displayPrice"), f"{where}.displayPrice")
        items.append(
            line(
                item_id,
                quantity(detail.get("quantity"), f"{where}.quantity"),
                unit_price,
                category(product.get("categories")),
            )
        )
        code = currency(
            price_info.get("currencyCode") or detail.get("currencyCode"),
            f"{where}.product.priceInfo.currencyCode",
        )
        if code:
            currencies.append(code)
    return items, (currencies[0] if currencies else None)
