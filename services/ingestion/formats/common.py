"""What the format mappers share: the result type, body decoding, ids, numbers and timestamps.

Each mapper reads one source event at a time and either builds native event dicts (which
ingestion then validates with `parse_event`), names the event as ignored on purpose, or raises
`MappingError` with a reason that reads well in a rejection list.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from services.common import jsonbody
from services.common.events import MAX_ID_LENGTH

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Identity:
    """Who a source event says its sender is, and what they consented to: the facts as the
    format carries them, which ingestion validates into member commands (links, consent).
    """

    # The id the event's native events land on: the known member when the source names one
    # (Segment userId, GA4 user_id, Retail userInfo.userId), else the anonymous visitor.
    member_id: str
    # Anonymous ids the same person was seen under (Segment anonymousId and an alias's
    # previousId, GA4 client_id / app_instance_id, Retail visitorId): each links to
    # `member_id`. Empty when the source names no known member.
    anonymous_ids: tuple[str, ...] = ()
    # A partial consent change of `member_id` (keys of services.common.members.CONSENT_KEYS).
    consent: dict[str, bool] = field(default_factory=dict)
    # When the source dates the event (ISO 8601 UTC text), else None.
    timestamp: str | None = None


@dataclass(frozen=True)
class Translated:
    """What became of one source event."""

    index: int  # position of the source event in the payload
    source_id: str  # the source's own id of the event when it has one (messageId, ...), else ""
    events: list[dict[str, Any]]  # native event dicts (empty when ignored or on error)
    ignored: str | None = None  # the source event name, when recofleet ignores it on purpose
    error: str | None = None  # why this source event cannot be mapped
    # Links and consent the source event carries, whatever became of the event itself (an
    # identify call is ignored as an event, yet links a visitor to a member).
    identity: Identity | None = None


class MappingError(Exception):
    """One source event cannot be mapped; the message says why and becomes `Translated.error`."""


# Failures of one event that must not poison the rest of the body: a mapper bug or an odd
# value surfaces as that event's error instead of a 5xx for the whole request.
EVENT_FAILURES: tuple[type[Exception], ...] = (
    MappingError,
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    OverflowError,
)


def failed(index: int, source_id: str, exc: Exception) -> Translated:
    reason = str(exc) if isinstance(exc, MappingError) else f"cannot map this event: {exc}"
    return Translated(index, source_id, [], error=reason)


def decode_json(payload: bytes) -> Any:
    """The decoded body; `ValueError` with a readable reason when it is not JSON."""
    return jsonbody.decode(payload)


# A JSON body's outline: its top level decoded, each value under it left as raw JSON.
_OUTLINE = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])


def entry_count(payload: bytes, *paths: tuple[str, ...]) -> int | None:
    """How many entries a JSON body holds, counted on its outline: they are skipped over,
    never decoded, so that a body of millions of `{}` is counted in a fraction of a second.

    A list holds its elements. An object holds the list at the first of `paths` (keys from
    the top) whose first key it has, or is the one entry itself. None when the body cannot
    be outlined, or the path leads to no list: then it is no body to count, and the strict
    decoder (`decode_json`), which alone decides what a body says, tells why.
    """
    outline = _outline(payload.removeprefix(codecs.BOM_UTF8))
    if not isinstance(outline, dict):
        return None if outline is None else len(outline)
    path = next((path for path in paths if path[0] in outline), None)
    if path is None:
        return 1
    node: Any = outline
    for key in path:
        if not isinstance(node, dict):
            return None
        if key not in node:
            return 1  # an object without the key is itself the one entry
        node = _outline(node[key])
    return len(node) if isinstance(node, list) else None


def _outline(raw: bytes | msgspec.Raw) -> dict[str, msgspec.Raw] | list[msgspec.Raw] | None:
    try:
        return _OUTLINE.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: past msgspec's depth limit
        return None


def canonical_json(value: Any) -> str:
    """One spelling per JSON value (sorted keys, no spaces): the input of every hashed id."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def prefixed_id(prefix: str, own_id: str) -> str:
    """`<prefix>-<own id>`, or a hash of the own id when that would exceed the native limit."""
    candidate = f"{prefix}-{own_id}"
    if len(candidate) <= MAX_ID_LENGTH:
        return candidate
    return f"{prefix}-{digest(own_id)[:32]}"


class IdMinter:
    """Deterministic event ids for sources that have none of their own.

    The id is a hash of what identifies the event, so a retried delivery of the same body gets
    the same ids and consumers apply it once. Two identical events in one body (no timestamp,
    same params) would collide and one would be lost, so the n-th twin also hashes its rank:
    still the same ids on a retry, but no silent merge inside one body.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._seen: Counter[str] = Counter()

    def mint(self, material: Any) -> str:
        key = digest(material)
        rank = self._seen[key]
        self._seen[key] += 1
        if rank:
            key = digest([material, rank])
        return f"{self._prefix}-{key[:32]}"


def text(value: Any, where: str) -> str | None:
    """A string field: strings are stripped, numbers become their decimal text, blank is None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise MappingError(f"{where} must be a string, got a boolean")
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    raise MappingError(f"{where} must be a string, got {_kind(value)}")


def number(value: Any, where: str) -> float | None:
    """A numeric field; numeric strings ("15.25", as data layers often send) are accepted."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise MappingError(f"{where} must be a number, got a boolean")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise MappingError(f"{where} must be a number, got '{value}'") from None
    else:
        raise MappingError(f"{where} must be a number, got {_kind(value)}")
    if not math.isfinite(result):
        raise MappingError(f"{where} must be a finite number")
    return result


def price(value: Any, where: str) -> float | None:
    result = number(value, where)
    if result is not None and result < 0:
        raise MappingError(f"{where} must not be negative, got {value}")
    return result


def quantity(value: Any, where: str) -> int:
    """A whole number of at least 1; absent means 1."""
    amount = number(value, where)
    if amount is None:
        return 1
    if not amount.is_integer() or amount < 1:
        raise MappingError(f"{where} must be a whole number of at least 1, got {value}")
    return int(amount)


def currency(value: Any, where: str) -> str | None:
    """An ISO 4217 code, upper-cased ('usd' -> 'USD')."""
    code = text(value, where)
    if code is None:
        return None
    if len(code) != 3 or not code.isalpha():
        raise MappingError(f"{where} must be a 3-letter ISO 4217 currency code, got '{code}'")
    return code.upper()


def category(value: Any) -> str | None:
    """A descriptive label: kept when it is text (cut to the native limit), else dropped.

    A category in an odd shape must not cost the shop its purchase; the original value stays
    in the event's `context.source` anyway.
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:MAX_ID_LENGTH]


def iso_timestamp(value: Any, where: str) -> str | None:
    """An ISO 8601 / RFC 3339 date-time as ISO 8601 UTC ('...Z'); a naive one is read as UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where} must be an ISO 8601 date-time string, got {_kind(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MappingError(f"{where} '{value}' is not an ISO 8601 date-time") from None
    return utc_text(parsed)


def micros_timestamp(value: Any, where: str) -> str | None:
    """Unix microseconds (a number or a string of digits) as ISO 8601 UTC."""
    if value is None:
        return None
    micros = number(value, where)
    if micros is None:
        return None
    if not micros.is_integer():
        raise MappingError(f"{where} must be whole microseconds, got {value}")
    try:
        return utc_text(_EPOCH + timedelta(microseconds=int(micros)))
    except OverflowError:
        raise MappingError(f"{where} {value} is out of range") from None


def utc_text(moment: datetime) -> str:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def line(item_id: str, amount: int, unit_price: float | None, label: str | None) -> dict[str, Any]:
    """One native `items[]` entry."""
    return compact({"item_id": item_id, "quantity": amount, "price": unit_price, "category": label})


# Native types about one thing: with a single line they also carry `item_id`.
ITEM_LEVEL_TYPES = frozenset(
    {"view", "click", "add_to_cart", "remove_from_cart", "wishlist", "rate"}
)


def single_item_id(native_type: str, items: list[dict[str, Any]]) -> str | None:
    if native_type in ITEM_LEVEL_TYPES and len(items) == 1:
        return str(items[0]["item_id"])
    return None


def compact(fields: dict[str, Any]) -> dict[str, Any]:
    """The dict without its None values (native events omit what they do not know)."""
    return {key: value for key, value in fields.items() if value is not None}


# What a format says about the person rather than the event (Segment's traits: name,
# address, birthday; GA4's user-provided data: address, hashed contact details; Retail's
# user info: IP address, user agent). recofleet has no use for any of it beyond the ids and
# consent it maps, so it is not kept: data it does not hold cannot leak. (GA4's user
# properties stay: Google's terms forbid personal data in them, and shops send tiers there.)
PERSONAL_DETAILS = frozenset({"traits", "user_data", "userInfo"})


def source_context(fmt: str, kept: dict[str, Any]) -> dict[str, Any]:
    """The native `context`: what the shop sent beyond the mapped fields, under `source`,
    without the person's details (`PERSONAL_DETAILS`, also in a `context` within)."""
    kept = {key: value for key, value in kept.items() if key not in PERSONAL_DETAILS}
    inner = kept.get("context")
    if isinstance(inner, dict) and not PERSONAL_DETAILS.isdisjoint(inner):
        kept["context"] = {k: v for k, v in inner.items() if k not in PERSONAL_DETAILS} or None
    return {"source": {"format": fmt, **compact(kept)}}


def identity_of(
    member_id: str | None,
    anonymous_ids: tuple[str | None, ...],
    consent: dict[str, bool],
    timestamp: str | None,
) -> Identity | None:
    """The identity facts of one source event, or None when it says nothing worth a command
    (no known member with an anonymous id, no consent)."""
    if member_id is None:
        return None
    others = tuple(dict.fromkeys(a for a in anonymous_ids if a is not None and a != member_id))
    if not others and not consent:
        return None
    return Identity(member_id, others, consent, timestamp)


def object_or_empty(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError(f"{where} must be an object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__
