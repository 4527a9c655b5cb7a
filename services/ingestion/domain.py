"""Validation and publishing of events and catalog items, free of any transport.

For events: translate the shop's format to native events, scrub emails and phone numbers
into keyed hashes, validate each event on its own, publish the valid ones keyed by member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, EventBus, Message
from services.common.events import (
    CatalogItem,
    Event,
    describe_error,
    event_records,
    parse_event,
    split_batch,
)
from services.common.pii import PiiScrubber
from services.ingestion.formats import Translated, translate
from services.ingestion.settings import IngestionSettings

T = TypeVar("T", bound=BaseModel)


class BadPayload(ValueError):
    """The request as a whole cannot be read (not JSON, unknown format)."""


class TooManyEvents(BadPayload):
    """More events in one request than the settings allow."""


@dataclass(frozen=True)
class Rejected:
    index: int
    id: str
    reason: str


@dataclass
class Outcome:
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: int = 0


class Ingestor:
    def __init__(self, bus: EventBus, scrubber: PiiScrubber, settings: IngestionSettings) -> None:
        self._bus = bus
        self._scrubber = scrubber
        self._settings = settings

    def publish_events(self, payload: bytes, fmt: str = "native") -> Outcome:
        """Validate each event on its own; publish the valid ones keyed by member."""
        suspect = self._scrubber.may_contain(payload)
        if fmt in ("", "native") and not suspect and (events := _all_valid(payload)) is not None:
            # The common case, a clean native batch, validated in one pass without a detour
            # through Python dicts; anything else takes the event-by-event path below.
            self._check_size(len(events), "events")
            self._bus.publish(EVENTS_TOPIC, event_records(events))
            return Outcome(accepted=[e.event_id for e in events])
        try:
            translated = translate(fmt or "native", payload)
        except ValueError as exc:
            raise BadPayload(str(exc)) from exc
        self._check_size(len(translated), "events")
        scrub = self._scrubber.scrub if suspect else _as_is
        outcome, events = Outcome(), []
        for source in translated:
            events.extend(self._events_of(source, outcome, scrub))
        self._bus.publish(EVENTS_TOPIC, event_records(events))
        outcome.accepted = [e.event_id for e in events]
        return outcome

    def _events_of(
        self, source: Translated, outcome: Outcome, scrub: Callable[[Any], Any]
    ) -> list[Event]:
        if source.ignored:
            outcome.ignored += 1
            return []
        if source.error:
            outcome.rejected.append(Rejected(source.index, source.source_id, source.error))
            return []
        try:
            # Scrubbed before validation so that not even an error message echoes PII.
            return [parse_event(scrub(raw)) for raw in source.events]
        except ValidationError as exc:
            reason = describe_error(exc)
        except ValueError as exc:
            reason = str(exc)
        outcome.rejected.append(Rejected(source.index, _raw_id(source), reason))
        return []

    def upsert_items(self, payload: bytes) -> Outcome:
        """Validate catalog items; publish the valid ones keyed by item."""
        try:
            raws = split_batch(payload, "items")
        except ValueError as exc:
            raise BadPayload(str(exc)) from exc
        self._check_size(len(raws), "items")
        outcome, items = _validate(raws, CatalogItem.model_validate, lambda i: i.item_id)
        messages = [Message(key=i.item_id, value=i.to_bytes()) for i in items]
        self._bus.publish(CATALOG_TOPIC, messages)
        return outcome

    def _check_size(self, count: int, what: str) -> None:
        if count > self._settings.max_batch_events:
            raise TooManyEvents(
                f"{count} {what} in one request; at most {self._settings.max_batch_events}"
            )


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event]


def _all_valid(payload: bytes) -> list[Event] | None:
    """Every event of a native body when all are valid, else None (the caller looks closer)."""
    try:
        return _Batch.model_validate_json(payload).events
    except ValidationError:
        pass
    try:
        return [Event.model_validate_json(payload)]
    except ValidationError:
        return None


def _as_is(raw: Any) -> Any:
    return raw


def _validate(
    raws: list[Any], parse: Callable[[Any], T], ident: Callable[[T], str]
) -> tuple[Outcome, list[T]]:
    outcome = Outcome()
    valid: list[T] = []
    for index, raw in enumerate(raws):
        try:
            model = parse(raw)
        except ValidationError as exc:
            outcome.rejected.append(Rejected(index, _item_id(raw), describe_error(exc)))
            continue
        valid.append(model)
        outcome.accepted.append(ident(model))
    return outcome, valid


def _item_id(raw: Any) -> str:
    return str(raw.get("item_id") or "") if isinstance(raw, dict) else ""


def _raw_id(source: Translated) -> str:
    first = source.events[0] if source.events else None
    event_id = first.get("event_id") if isinstance(first, dict) else None
    return source.source_id or str(event_id or "")
