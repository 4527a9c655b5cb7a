"""Hypothesis strategies for contact data written in every way JSON allows.

An email or phone number may reach recofleet as plain text, with any of its characters
written as `\\uXXXX` escapes (lower or upper case hex), `/` as `\\/`, in a key name or a
value, in any field of any format. `dumps` writes a JSON body choosing, character by
character, how each string is spelled; the decoded value is always the same.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from services.common.pii import CONTACT_KEYS

# What the scrubber reads as an address's local part (URL delimiters end it: / = ? # &).
_LOCAL = string.ascii_letters + string.digits + "._%+-!$'*^`{|}~"
_LABEL = string.ascii_lowercase + string.digits
# Decimal digits of other scripts: the scrubber's patterns read them as digits too.
_DIGIT_SETS = tuple(
    "".join(chr(zero + n) for n in range(10)) for zero in (0x30, 0x660, 0x966, 0xFF10)
)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text(_LOCAL, min_size=1, max_size=12).filter(lambda s: s[0] not in ".-"))
    labels = draw(st.lists(st.text(_LABEL, min_size=1, max_size=8), min_size=1, max_size=2))
    tld = draw(st.text(string.ascii_lowercase, min_size=2, max_size=5))
    address = f"{local}@{'.'.join([*labels, tld])}"
    return address.upper() if draw(st.booleans()) and draw(st.booleans()) else address


@st.composite
def phones(draw: st.DrawFn) -> str:
    digits = draw(st.sampled_from(_DIGIT_SETS))

    def group(n: int) -> str:
        return "".join(draw(st.sampled_from(digits)) for _ in range(n))

    shape = draw(st.integers(0, 6))
    if shape == 0:
        return f"+{group(2)} {group(2)} {group(4)} {group(4)}"
    if shape == 5:
        space = draw(st.sampled_from(["\u00a0", "\u202f", "\u2009"]))
        return f"+{group(2)}{space}{group(4)}{space}{group(6)}"
    if shape == 6:
        return f"{group(3)}\u2013{group(4)}\u2013{group(4)}"
    if shape == 1:
        return f"({group(3)}) {group(3)}-{group(4)}"
    if shape == 2:
        return f"{group(3)}-{group(3)}-{group(4)}"
    if shape == 3:
        return f"+{group(11)}"
    return f"{group(3)}.{group(3)}.{group(4)}"


def contact_data() -> st.SearchStrategy[str]:
    return st.one_of(emails(), phones())


def contact_keys() -> st.SearchStrategy[str]:
    """A contact key (`email`, `Phone`, ...) in any case."""
    return st.sampled_from(sorted(CONTACT_KEYS)).flatmap(
        lambda key: st.sampled_from([key, key.upper(), key.capitalize()])
    )


def secret_words() -> st.SearchStrategy[str]:
    """A value that is personal only because of the key it stands under."""
    return st.text(string.ascii_lowercase, min_size=12, max_size=16).map(lambda s: f"zq{s}")


def spellings() -> st.SearchStrategy[random.Random]:
    """The choice of how each character of a body's strings is written."""
    return st.randoms(use_true_random=False)


def dumps(value: Any, spelling: random.Random) -> str:
    """`value` as JSON text, each character of its strings written one of the allowed ways."""
    if isinstance(value, dict):
        pairs = (f"{_string(str(k), spelling)}:{dumps(v, spelling)}" for k, v in value.items())
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v, spelling) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, spelling)
    return json.dumps(value)


def _string(text: str, spelling: random.Random) -> str:
    return '"' + "".join(_char(c, spelling) for c in text) + '"'


def _char(c: str, spelling: random.Random) -> str:
    code = ord(c)
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        return c if spelling.random() < 0.5 else f"\\u{high:04x}\\u{low:04X}"
    choice = spelling.random()
    if c in '"\\' or code < 0x20:
        return f"\\u{code:04x}" if choice < 0.5 else json.dumps(c)[1:-1]
    if c == "/" and choice < 0.3:
        return "\\/"
    if choice < 0.4:
        return c
    return f"\\u{code:04x}" if choice < 0.7 else f"\\u{code:04X}"


@st.composite
def placed(draw: st.DrawFn) -> tuple[str, Any, list[str]]:
    """A body in one of the formats with contact data in one of its fields.

    Returns the format, the body (a JSON value, written out later by `dumps`) and the
    strings that must never be stored: the contact data, or a word under a contact key.
    Phone numbers go only where the scrubber looks for them: identifiers (`item_id`,
    `order_id`, ...) keep their format unless they hold an email (docs/events.md).
    """
    fmt = draw(st.sampled_from(["native", "segment", "ga4", "google_retail"]))
    anything, email = draw(contact_data()), draw(emails())
    word, key = draw(secret_words()), draw(contact_keys())
    slot = draw(st.integers(0, 7))
    build = {"native": _native, "segment": _segment, "ga4": _ga4, "google_retail": _retail}[fmt]
    body, secret = build(slot, anything, email, word, key)
    return fmt, body, [secret]


def _in_url(found: str) -> str:
    """A page URL with `found` percent-encoded in its query, as browsers send it."""
    return f"https://shop.example/p/85123A?ref={quote(found, safe='')}&utm_source=mail"


def _native(slot: int, anything: str, email: str, word: str, key: str) -> tuple[Any, str]:
    event: dict[str, Any] = {"type": "view", "member_id": "m-1", "item_id": "85123A"}
    if slot == 0:
        return event | {"member_id": anything}, anything
    if slot == 1:
        return event | {"session_id": email, "recommendation_id": email}, email
    if slot == 2:
        purchase = {"type": "purchase", "member_id": "m-1", "order_id": email}
        return purchase | {"items": [{"item_id": email, "category": email, "price": 2.5}]}, email
    if slot == 3:
        return {"type": "search", "member_id": "m-1", "query": f"find {anything} now"}, anything
    if slot == 4:
        return event | {"context": {"note": [anything], "deep": {"x": anything}}}, anything
    if slot == 5:
        return {"events": [event | {"context": {anything: 1}}]}, anything
    if slot == 6:
        return event | {"context": {"page_url": _in_url(anything)}}, quote(anything, safe="")
    return event | {"context": {"traits": {key: word}}}, word


def _segment(slot: int, anything: str, email: str, word: str, key: str) -> tuple[Any, str]:
    track: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed",
        "userId": "u-1",
        "messageId": "msg-1",
        "properties": {"product_id": "85123A"},
    }
    if slot == 0:
        return track | {"userId": anything}, anything
    if slot == 1:
        return {"batch": [track | {"userId": None, "anonymousId": anything}]}, anything
    if slot == 2:
        return track | {"event": "Products Searched", "properties": {"query": anything}}, anything
    if slot == 3:
        return track | {"context": {"traits": {key: word}}}, word
    if slot == 4:
        return {"batch": [track], "context": {"traits": {"email": word}}}, word
    if slot == 5:
        return track | {"properties": {"product_id": email, "note": anything}}, email
    if slot == 6:
        page = {"url": _in_url(anything), "referrer": _in_url(anything)}
        return track | {"context": {"page": page}}, quote(anything, safe="")
    return track | {"properties": {"product_id": "1", "note": anything}}, anything


def _ga4(slot: int, anything: str, email: str, word: str, key: str) -> tuple[Any, str]:
    view = {"name": "view_item", "params": {"items": [{"item_id": "85123A"}]}}
    body: dict[str, Any] = {"client_id": "c-1", "events": [view]}
    if slot in (0, 1):
        return body | {("user_id" if slot == 0 else "client_id"): anything}, anything
    if slot == 2:
        search = {"name": "search", "params": {"search_term": anything}}
        return body | {"events": [search]}, anything
    if slot == 3:
        return body | {"user_properties": {key: {"value": word}}}, word
    if slot == 4:
        return body | {
            "events": [{"name": "view_item", "params": {"items": [{"item_id": email}]}}]
        }, email
    return body | {"events": [view | {"params": view["params"] | {"note": anything}}]}, anything


def _retail(slot: int, anything: str, email: str, word: str, key: str) -> tuple[Any, str]:
    event: dict[str, Any] = {
        "eventType": "detail-page-view",
        "visitorId": "v-1",
        "productDetails": [{"product": {"id": "85123A"}}],
    }
    if slot == 0:
        return event | {"userInfo": {"userId": anything}}, anything
    if slot == 1:
        return {"userEvents": [event | {"visitorId": anything}]}, anything
    if slot == 2:
        return {"eventType": "search", "visitorId": "v-1", "searchQuery": anything}, anything
    if slot == 3:
        return event | {"attributes": {"note": {"text": [anything]}}}, anything
    if slot == 4:
        return event | {"productDetails": [{"product": {"id": email}}]}, email
    if slot == 5:
        return event | {"userInfo": {"userId": "u", key: word}}, word
    return [event, event | {"visitorId": anything}], anything
