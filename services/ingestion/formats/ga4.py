"""GA4 ecommerce events -> native events.

Specs:
- https://developers.google.com/analytics/devguides/collection/ga4/ecommerce (events, params)
- https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference (body)

Bodies accepted:
- a Measurement Protocol body: `{"client_id", "user_id", "app_instance_id", "timestamp_micros",
  "user_properties", "consent", ..., "events": [{"name", "params", "timestamp_micros"?}]}`;
- a bare JSON list of `{"name", "params"}` events, or one such event, with the ids (`user_id`,
  `client_id`) and optionally `timestamp_micros` inside `params` (gtag sends no envelope).

Mapping:

| GA4 event                     | native                                              |
|-------------------------------|-----------------------------------------------------|
| view_item                     | view                                                |
| select_item                   | click                                               |
| add_to_cart                   | add_to_cart                                         |
| remove_from_cart              | remove_from_cart                                    |
| add_to_wishlist               | wishlist                                            |
| purchase                      | purchase (`transaction_id` required, as in GA4)     |
| refund                        | refund (`transaction_id`; `items` or `value`)       |
| search, view_search_results   | search (`search_term`)                              |
| view_item_list, view_promotion| impression, only when every item has an `item_id`   |

- item: `items[].item_id` (required), `quantity` (absent = 1), `price`, `item_category`.
  Single-item events also set `item_id`.
- purchase / refund: `order_id` = `transaction_id`, `revenue` = `value` (a refund's is the
  amount refunded, positive), `currency` upper-cased. A "full refund" (no items) maps to a
  refund of the whole order for `value`; without `value` it is an error.
- `session_id`: `params.session_id` (the MP's recommended parameter).
- `recommendation_id`: never set (`item_list_id` is the shop's list, not a recommendation).
- `member_id`: `user_id`, else `client_id`, else `app_instance_id` (body first, then params).
- `timestamp`: the event's `timestamp_micros`, else `params.timestamp_micros`, else the
  body's; absent stays absent (ingestion stamps it).
- `event_id`: GA4 has no event id, so `ga4-` + sha256 of the canonical JSON of (user_id,
  client_id, app_instance_id, name, params, timestamp)[:32]: a retried body gets the same ids.
- `context.source`: the event's `params` (whole) and the body's other fields (`client_id`,
  `user_properties`, `consent`, ...), minus `events`, any `api_secret` and the person's
  `user_data` (address, hashed contact details: not kept, `common.PERSONAL_DETAILS`).

Identity (`Translated.identity`, of every event whatever its name, docs/identity.md):
- links: `client_id` -> `user_id`, and `app_instance_id` -> `user_id`, when both are set;
- consent: the body's `consent.ad_personalization` ("GRANTED" / "DENIED", any case) is
  consent to personalization; `ad_user_data` has no recofleet counterpart and is left alone.
  The consent is the member's (`user_id`, else `client_id`, else `app_instance_id`).

Ignored on purpose: every other event (page_view, view_cart, begin_checkout,
add_shipping_info, add_payment_info, select_promotion, generate_lead, ...), and
view_item_list / view_promotion whose items are not all identified.
"""

from __future__ import annotations

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
    line,
    micros_timestamp,
    number,
    object_or_empty,
    price,
    quantity,
    single_item_id,
    source_context,
    text,
)

SPEC_URL = "https://developers.google.com/analytics/devguides/collection/ga4/ecommerce"

_ITEM_EVENTS = {
    "view_item": "view",
    "select_item": "click",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "add_to_wishlist": "wishlist",
}
_ORDER_EVENTS = {"purchase": "purchase", "refund": "refund"}
_SEARCH_EVENTS = frozenset({"search", "view_search_results"})
_LIST_EVENTS = frozenset({"view_item_list", "view_promotion"})
_KNOWN = frozenset(_ITEM_EVENTS) | frozenset(_ORDER_EVENTS) | _SEARCH_EVENTS | _LIST_EVENTS
_NOT_KEPT = frozenset({"events", "api_secret"})


def read(payload: bytes) -> Any:
    """The decoded body (see `translate`)."""
    return decode_json(payload)


def count(payload: bytes) -> int | None:
    """How many events `payload` holds, without decoding them (as `translate` finds them)."""
    return entry_count(payload, ("events",))


def translate(body: Any) -> list[Translated]:
    envelope: dict[str, Any] = {}
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise ValueError("'events' must be a list of {name, params} events")
        envelope = body
    elif isinstance(body, dict) and "name" in body:
        events = [body]
    elif isinstance(body, list):
        events = body
    else:
        raise ValueError(
            'a GA4 body must be a Measurement Protocol body {"client_id", "events": [...]}, '
            'a list of {"name", "params"} events or one such event'
        )
    minter = IdMinter("ga4")
    consent = _consent(envelope.get("consent"))
    results = []
    for index, event in enumerate(events):
        result = _translate_event(index, event, envelope, minter)
        found = _identity(event, envelope, consent)
        results.append(replace(result, identity=found) if found else result)
    return results


def _identity(event: Any, envelope: dict[str, Any], consent: dict[str, bool]) -> Identity | None:
    """The links and consent of one event, whatever its name: a page_view of a signed-in
    visitor links its client_id to its user_id as well as a purchase does."""
    if not isinstance(event, dict):
        return None
    try:
        params = object_or_empty(event.get("params"), "params")
        user_id = _id(envelope, params, "user_id")
        client_id = _id(envelope, params, "client_id")
        app_instance_id = _id(envelope, params, "app_instance_id")
    except EVENT_FAILURES:
        return None
    try:
        raw_time = _first(
            event.get("timestamp_micros"),
            params.get("timestamp_micros"),
            envelope.get("timestamp_micros"),
        )
        timestamp = micros_timestamp(raw_time, "timestamp_micros")
    except EVENT_FAILURES:
        timestamp = None
    if user_id is None:
        return identity_of(client_id or app_instance_id, (), consent, timestamp)
    return identity_of(user_id, (client_id, app_instance_id), consent, timestamp)


def _consent(value: Any) -> dict[str, bool]:
    """The Measurement Protocol's `consent`: `ad_personalization` is consent to
    personalization. `ad_user_data` (sending user data to Google for ads) has no
    recofleet counterpart and is left alone."""
    if not isinstance(value, dict):
        return {}
    state = value.get("ad_personalization")
    if not isinstance(state, str) or state.strip().upper() not in ("GRANTED", "DENIED"):
        return {}
    return {"personalization": state.strip().upper() == "GRANTED"}


def _translate_event(
    index: int, event: Any, envelope: dict[str, Any], minter: IdMinter
) -> Translated:
    if not isinstance(event, dict):
        return Translated(index, "", [], error="a GA4 event must be a JSON object")
    try:
        name = text(event.get("name"), "name")
        if name is None:
            raise MappingError("a GA4 event needs a 'name'")
        if name not in _KNOWN:
            return Translated(index, "", [], ignored=name)
        params = object_or_empty(event.get("params"), "params")
        fields = _fields(name, params)
        if fields is None:
            return Translated(index, "", [], ignored=name)
        user_id = _id(envelope, params, "user_id")
        client_id = _id(envelope, params, "client_id")
        app_instance_id = _id(envelope, params, "app_instance_id")
        member_id = user_id or client_id or app_instance_id
        if member_id is None:
            raise MappingError(
                f"{name}: no user id; set user_id or client_id (in the body, or in params "
                "for an event sent without a Measurement Protocol body)"
            )
        raw_time = _first(
            event.get("timestamp_micros"),
            params.get("timestamp_micros"),
            envelope.get("timestamp_micros"),
        )
        native = {
            "event_id": minter.mint([user_id, client_id, app_instance_id, name, params, raw_time]),
            "member_id": member_id,
            "session_id": text(params.get("session_id"), "params.session_id"),
            **fields,
            "timestamp": micros_timestamp(raw_time, "timestamp_micros"),
            "context": _context(event, name, params, envelope),
        }
        return Translated(index, "", [compact(native)])
    except EVENT_FAILURES as exc:
        return failed(index, "", exc)


def _fields(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The native fields of one known event, or None when it is ignored after all."""
    if name in _SEARCH_EVENTS:
        query = text(params.get("search_term"), "params.search_term")
        if query is None:
            raise MappingError(f"{name} needs params.search_term")
        return {"type": "search", "query": query}
    if name in _LIST_EVENTS:
        items = _listed(params.get("items"))
        return None if items is None else {"type": "impression", "items": items}
    if name in _ORDER_EVENTS:
        return _order(_ORDER_EVENTS[name], name, params)
    native_type = _ITEM_EVENTS[name]
    items = _items(name, params.get("items"))
    return compact(
        {
            "type": native_type,
            "item_id": single_item_id(native_type, items),
            "items": items,
            "currency": currency(params.get("currency"), "params.currency"),
        }
    )


def _order(native_type: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    order_id = text(params.get("transaction_id"), "params.transaction_id")
    if order_id is None:
        raise MappingError(f"{name} needs params.transaction_id")
    revenue = number(params.get("value"), "params.value")
    full_refund = native_type == "refund" and not params.get("items")
    if full_refund and revenue is None:
        raise MappingError("refund needs params.items, or params.value for a full refund")
    if revenue is not None and native_type == "refund":
        revenue = abs(revenue)
    return compact(
        {
            "type": native_type,
            "items": None if full_refund else _items(name, params.get("items")),
            "order_id": order_id,
            "revenue": revenue,
            "currency": currency(params.get("currency"), "params.currency"),
        }
    )


def _items(name: str, items: Any) -> list[dict[str, Any]]:
    if items is None or items == []:
        raise MappingError(f"{name} needs params.items, each with an item_id")
    if not isinstance(items, list):
        raise MappingError("params.items must be a list")
    return [_item(name, item, position) for position, item in enumerate(items)]


def _item(name: str, item: Any, position: int) -> dict[str, Any]:
    where = f"params.items[{position}]"
    if not isinstance(item, dict):
        raise MappingError(f"{where} must be an object")
    item_id = text(item.get("item_id"), f"{where}.item_id")
    if item_id is None:
        raise MappingError(f"{name}: {where} needs an item_id")
    return line(
        item_id,
        quantity(item.get("quantity"), f"{where}.quantity"),
        price(item.get("price"), f"{where}.price"),
        category(item.get("item_category")),
    )


def _listed(items: Any) -> list[dict[str, Any]] | None:
    """Impression lines when every item is clearly identified, else None (ignore)."""
    if not isinstance(items, list) or not items:
        return None
    try:
        return [_item("", item, position) for position, item in enumerate(items)]
    except MappingError:
        return None


def _id(envelope: dict[str, Any], params: dict[str, Any], key: str) -> str | None:
    return text(envelope.get(key), key) or text(params.get(key), f"params.{key}")


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _context(
    event: dict[str, Any], name: str, params: dict[str, Any], envelope: dict[str, Any]
) -> dict[str, Any]:
    kept = {key: value for key, value in envelope.items() if key not in _NOT_KEPT}
    extra = {key: value for key, value in event.items() if key not in ("name", "params")}
    return source_context("ga4", {"name": name, "params": params or None, **kept, **extra})
