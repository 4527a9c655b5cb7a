"""Validation and publishing of events and catalog items, free of any transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, EventBus, Message
from services.common.events import CatalogItem, describe_error, parse_event, split_batch
from services.ingestion.settings import IngestionSettings

T = TypeVar("T", bound=BaseModel)


class BadPayload(ValueError):
    """The request as a whole cannot be read (not JSON, not a list, too many events)."""


@dataclass(frozen=True)
class Rejected:
    index: int
    id: str
    reason: str


@dataclass
class Outcome:
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class Ingestor:
    def __init__(self, bus: EventBus, settings: IngestionSettings) -> None:
        self._bus = bus
        self._settings = settings

    def publish_events(self, payload: bytes, fmt: str = "native") -> Outcome:
        """Validate each event on its own; publish the valid ones keyed by member."""
        if fmt not in ("", "native"):
            raise BadPayload(f"unknown event format '{fmt}'; supported: native")
        raws = self._split(payload, split_batch, "events")
        outcome, events = _validate(raws, parse_event, lambda e: e.event_id)
        messages = [Message(key=e.member_id, value=e.to_bytes()) for e in events]
        self._bus.publish(EVENTS_TOPIC, messages)
        return outcome

    def upsert_items(self, payload: bytes) -> Outcome:
        """Validate catalog items; publish the valid ones keyed by item."""
        raws = self._split(payload, _split_items, "items")
        outcome, items = _validate(raws, CatalogItem.model_validate, lambda i: i.item_id)
        self._bus.publish(
            CATALOG_TOPIC, [Message(key=i.item_id, value=i.to_bytes()) for i in items]
        )
        return outcome

    def _split(
        self, payload: bytes, splitter: Callable[[bytes], list[Any]], what: str
    ) -> list[Any]:
        try:
            raws = splitter(payload)
        except ValueError as exc:
            raise BadPayload(str(exc)) from exc
        if len(raws) > self._settings.max_batch_events:
            raise BadPayload(
                f"{len(raws)} {what} in one request; at most {self._settings.max_batch_events}"
            )
        return raws


def _split_items(payload: bytes) -> list[Any]:
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from exc
    if isinstance(body, dict) and "items" in body:
        if not isinstance(body["items"], list):
            raise ValueError("'items' must be a list")
        return list(body["items"])
    return body if isinstance(body, list) else [body]


def _validate(
    raws: list[Any], parse: Callable[[Any], T], ident: Callable[[T], str]
) -> tuple[Outcome, list[T]]:
    outcome = Outcome()
    valid: list[T] = []
    for index, raw in enumerate(raws):
        try:
            model = parse(raw)
        except ValidationError as exc:
            outcome.rejected.append(Rejected(index, _raw_id(raw), describe_error(exc)))
            continue
        except ValueError as exc:
            outcome.rejected.append(Rejected(index, _raw_id(raw), str(exc)))
            continue
        valid.append(model)
        outcome.accepted.append(ident(model))
    return outcome, valid


def _raw_id(raw: Any) -> str:
    if isinstance(raw, dict):
        return str(raw.get("event_id") or raw.get("item_id") or "")
    return ""
