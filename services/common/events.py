"""The native event: what every service reads from the bus.

Shops send events in this shape (or in formats mapped onto it). Validation lives here so
that the gateway, ingestion and loaders reject the same things for the same reasons.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.bus.base import Message
from services.common.jsonbody import all_finite, decode, depth

MAX_ID_LENGTH = 128
# Amounts (a unit price, an order's revenue, a line's price times quantity) above this are
# typing errors or attacks, never a shop's order; refusing them keeps every sum finite.
MAX_AMOUNT = 1_000_000_000.0
# How deeply an event's `context` may nest objects and lists (`{"a": {"b": 1}}` is 2).
MAX_CONTEXT_DEPTH = 16
# Ids are stored as text everywhere (PostgreSQL refuses NUL in text): no control characters.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_member_id(member_id: str, field: str = "member_id") -> str | None:
    """Why `member_id` cannot be a member id (the bounds events have), or None."""
    if not member_id:
        return f"{field} is required"
    if len(member_id) > MAX_ID_LENGTH:
        return f"{field} is at most {MAX_ID_LENGTH} characters"
    if _CONTROL.search(member_id):
        return f"{field} must not contain control characters"
    return None


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    WISHLIST = "wishlist"
    PURCHASE = "purchase"
    REFUND = "refund"
    SEARCH = "search"
    IMPRESSION = "impression"
    RATE = "rate"


# Types that are about one or more items and are meaningless without one. A refund may
# instead name a whole order and the amount refunded (a "full refund").
ITEM_TYPES = frozenset(EventType) - {EventType.SEARCH, EventType.REFUND}


def _id(description: str) -> Any:
    return Field(
        min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL, description=description
    )


def _optional_id(min_length: int = 0) -> Any:
    return Field(default=None, min_length=min_length, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL)


def _amount(description: str) -> Any:
    return Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False, description=description)


class EventItem(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)

    item_id: str = _id("the shop's item (SKU) id")
    quantity: int = Field(default=1, ge=1, le=100_000)
    price: float | None = _amount("the unit price paid or shown")
    category: str | None = _optional_id()

    @model_validator(mode="after")
    def _line_total(self) -> EventItem:
        if self.price is not None and self.price * self.quantity > MAX_AMOUNT:
            raise ValueError(f"price times quantity exceeds {MAX_AMOUNT:,.0f}")
        return self


class Event(BaseModel):
    """One thing a member did. `event_id` makes redelivery harmless: consumers apply an id once."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)

    event_id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=NO_CONTROL,
    )
    type: EventType
    member_id: str = _id("the shop's member (customer) id")
    session_id: str | None = _optional_id()
    item_id: str | None = _optional_id(min_length=1)
    items: list[EventItem] = Field(default_factory=list, max_length=1000)
    order_id: str | None = _optional_id()
    revenue: float | None = _amount("what the order was worth, or the amount refunded")
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    query: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00]*$")
    recommendation_id: str | None = _optional_id()
    rating: float | None = Field(default=None, ge=0, le=5, allow_inf_nan=False)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    context: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Stores keep instants in UTC (SQLite drops offsets), so normalise here, once.
        # A naive timestamp is ambiguous across shops in other zones; read it as UTC.
        try:
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range once in UTC") from None

    @field_validator("context")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value and depth(value) > MAX_CONTEXT_DEPTH:
            raise ValueError(f"nests objects and lists deeper than {MAX_CONTEXT_DEPTH} levels")
        if value and not all_finite(value):
            raise ValueError("holds a number too large to represent")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Event:
        if self.type in ITEM_TYPES and not self.item_id and not self.items:
            raise ValueError(f"a '{self.type.value}' event needs item_id or items")
        if self.type == EventType.REFUND and not (
            self.item_id or self.items or (self.order_id and self.revenue is not None)
        ):
            raise ValueError(
                "a 'refund' event needs items, or an order_id and the revenue refunded"
            )
        if self.type == EventType.SEARCH and not self.query:
            raise ValueError("a 'search' event needs a query")
        if self.type == EventType.RATE and self.rating is None:
            raise ValueError("a 'rate' event needs a rating")
        if sum((line.price or 0.0) * line.quantity for line in self.items) > MAX_AMOUNT:
            raise ValueError(f"the lines of this event add up to more than {MAX_AMOUNT:,.0f}")
        return self

    def lines(self) -> list[AnyItem]:
        """The items this event is about; `item_id` alone counts as one line of quantity 1."""
        if self.items:
            return list(self.items)
        return [EventItem(item_id=self.item_id)] if self.item_id else []

    def order_value(self) -> float:
        """What the order was worth: the stated revenue, else the sum of its lines."""
        return _order_value(self.revenue, self.lines())

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        return cls.model_validate_json(raw)


def _order_value(revenue: float | None, lines: Sequence[AnyItem]) -> float:
    if revenue is not None:
        return revenue
    return round(sum((line.price or 0.0) * line.quantity for line in lines), 2)


class WireItem(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """An EventItem as a consumer reads it off the bus (see WireEvent)."""

    item_id: str
    quantity: int = 1
    price: float | None = None
    category: str | None = None


class WireEvent(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """An Event as a consumer reads it off the bus: the same fields, decoded about ten
    times faster than by the Event model.

    What is on the bus was published by ingestion, which validated it as an Event and wrote
    it in canonical form (ids as strings, timestamps with their offset). Consumers read
    every record back, so the Event model's cost was paid once per consumer per event;
    this type checks the shape and the types, which is what a consumer needs to apply a
    record safely, and leaves the shop-facing rules and messages to the Event model.
    `read_events` prefers it and falls back to the Event model.
    """

    event_id: str
    type: EventType
    member_id: str
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    session_id: str | None = None
    item_id: str | None = None
    items: list[WireItem] = []
    order_id: str | None = None
    revenue: float | None = None
    currency: str | None = None
    query: str | None = None
    recommendation_id: str | None = None
    rating: float | None = None
    context: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is not UTC:
            msgspec.structs.force_setattr(self, "timestamp", self.timestamp.astimezone(UTC))

    def lines(self) -> list[AnyItem]:
        """The items this event is about; `item_id` alone counts as one line of quantity 1."""
        if self.items:
            return list(self.items)
        return [WireItem(item_id=self.item_id)] if self.item_id else []

    def order_value(self) -> float:
        """What the order was worth: the stated revenue, else the sum of its lines."""
        return _order_value(self.revenue, self.lines())


# What consumers apply: an Event (loaders, tests) or a WireEvent (read off the bus).
AnyEvent = Event | WireEvent
AnyItem = EventItem | WireItem

# A record on the events topic holds the events of one member from one request, as a JSON
# array in the order they were sent, keyed by the member. Shops' frontends batch per
# visitor, so this is usually a handful of records per request instead of one per event:
# the per-record work of the bus (kafka-python's above all) was most of its cost. Records
# stay well under Kafka's default 1 MB message limit; a single object is read too.
RECORD_TARGET_BYTES = 256 * 1024
_wire_one = msgspec.json.Decoder(WireEvent)
_wire_many = msgspec.json.Decoder(list[WireEvent])
_events = TypeAdapter(list[Event])


def event_records(events: Sequence[Event]) -> list[Message]:
    """The records that carry `events`: per member, in order, up to RECORD_TARGET_BYTES each."""
    by_member: dict[str, list[bytes]] = {}
    for event in events:
        by_member.setdefault(event.member_id, []).append(event.to_bytes())
    return [
        Message(member_id, b"[" + b",".join(chunk) + b"]")
        for member_id, values in by_member.items()
        for chunk in _chunks(values)
    ]


def _chunks(values: list[bytes]) -> list[list[bytes]]:
    """`values` in order, cut so that each chunk's JSON array stays within the target."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for value in values:
        if chunks[-1] and size + len(value) > RECORD_TARGET_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(value)
        size += len(value) + 1
    return chunks


def read_events(raw: bytes) -> list[AnyEvent]:
    """The events of a record off the bus; ValidationError when they are not valid Events."""
    first = raw[:1]
    if first.isspace():
        first = raw.lstrip()[:1]
    many = first == b"["
    try:
        return list(_wire_many.decode(raw)) if many else [_wire_one.decode(raw)]
    except msgspec.DecodeError:
        # Not in canonical form (say, from a producer of another version): the Event
        # model reads what it can and explains what it cannot.
        return list(_events.validate_json(raw)) if many else [Event.from_bytes(raw)]


# A catalog word (a tag, a brand, an attribute's name): stored as text, so no control
# characters, and short enough to keep every item's facts small in memory.
CatalogWord = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL)]
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_TEXT = 500


def _text_or_number_values(schema: dict[str, Any]) -> None:
    values = {"type": ["string", "number"]}
    schema["patternProperties"] = {key: values for key in schema.get("patternProperties", {})}


def _attribute_problem(value: Any) -> str | None:
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_TEXT:
            return f"must be text of at most {MAX_ATTRIBUTE_TEXT} characters"
        return "must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be text or a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


class CatalogItem(BaseModel):
    """What the shop says about an item: used for filters (stock), affinities (category),
    price, and merchandising rules (brand, tags; docs/merchandising.md)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)

    item_id: str = _id("the shop's item (SKU) id")
    name: str | None = Field(default=None, max_length=500, pattern=r"^[^\x00]*$")
    category: str | None = _optional_id()
    price: float | None = _amount("the item's current price")
    in_stock: bool = True
    tags: list[CatalogWord] = Field(default_factory=list, max_length=50)
    brand: str | None = _optional_id(min_length=1)
    attributes: dict[CatalogWord, Any] = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description='Other facts the shop keeps, text or numbers, e.g. {"colour": "red"}.',
        json_schema_extra=_text_or_number_values,
    )

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        # By hand rather than a union type: the union's errors name each of its members (three
        # lines for one wrong value), and the model would turn numbers into text.
        for name, given in value.items():
            problem = _attribute_problem(given)
            if problem:
                raise ValueError(f"{name}: {problem}")
        return value

    def to_bytes(self) -> bytes:
        # Without attributes the record is what earlier releases wrote and read (their
        # model forbids unknown fields), so a rolling update does not dead-letter items.
        skipped = None if self.attributes else {"attributes"}
        return self.model_dump_json(exclude_none=True, exclude=skipped).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> CatalogItem:
        return cls.model_validate_json(raw)


# What a pattern of the models means, in words a client understands.
_PATTERNS = {
    NO_CONTROL: "must not contain control characters",
    r"^[^\x00]*$": "must not contain NUL characters",
    r"^[A-Za-z]{3}$": "must be a 3-letter ISO 4217 currency code",
}


def describe_error(error: ValidationError) -> str:
    """One readable line per problem, e.g. `member_id: Field required`."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "event"
        message = _PATTERNS.get(str(problem.get("ctx", {}).get("pattern")), problem["msg"])
        message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_event(raw: Any) -> Event:
    """Validate one decoded JSON value as an event (raises ValidationError or ValueError)."""
    if not isinstance(raw, dict):
        raise ValueError(f"an event must be a JSON object, got {type(raw).__name__}")
    return Event.model_validate(raw)


def split_batch(payload: bytes, key: str = "events") -> list[Any]:
    """Decode a body holding one entry, a list, or {key: [...]} into the list of raw entries."""
    return entries_of(decode(payload), key)


def entries_of(body: Any, key: str = "events") -> list[Any]:
    """The raw entries of a decoded body: one entry, a list, or {key: [...]}."""
    if isinstance(body, dict) and key in body:
        entries = body[key]
        if not isinstance(entries, list):
            raise ValueError(f"'{key}' must be a list")
        return entries
    return body if isinstance(body, list) else [body]
