"""Validation and publishing of events and catalog items, free of any transport.

For events: decode the body, scrub emails and phone numbers into keyed hashes, translate
the shop's format to native events, validate each event on its own and against the
request (timestamps within bounds, ids unique), publish the valid ones keyed by member.
Every path onto the events topic (the gateway, the loaders) goes through `publish_events`.
A body with more events than the limit is refused first, before any of them is read; and
nothing is published once the caller has stopped waiting for the answer (`TooLate`).

What the source events say about their senders (an anonymous visitor seen with a member id,
a consent change) goes on the members topic as `Link` and `Consent` commands, before the
request's events, so that a consumer meets the link before the events it relabels. An
erasure request goes there too (`erase_member`): every service applies it to its own state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import attrgetter
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from services.common.bus import (
    CATALOG_TOPIC,
    EVENTS_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
    Message,
)
from services.common.bus_status import BusStatus, bus_status
from services.common.events import (
    MAX_ID_LENGTH,
    CatalogItem,
    Event,
    EventItem,
    EventType,
    check_member_id,
    describe_error,
    event_records,
    parse_event,
    split_batch,
)
from services.common.members import (
    CONSENT_KEYS,
    Consent,
    Erase,
    Link,
    MemberCommand,
    command_message,
)
from services.common.pii import PiiScrubber, pii_secret
from services.common.settings import FleetSettings
from services.ingestion import formats
from services.ingestion.formats import Translated
from services.ingestion.settings import IngestionSettings

T = TypeVar("T", bound=BaseModel)


class BadPayload(ValueError):
    """The request as a whole cannot be read (not JSON, unknown format)."""


class TooManyEvents(BadPayload):
    """More events in one request than the settings allow."""


class BadMemberId(BadPayload):
    """A member id that no event could carry (empty, too long, control characters)."""


class TooLate(Exception):
    """The caller stopped waiting before anything was published, so nothing was: it has been
    told to send the request again, and publishing now would count that request twice."""


def _always() -> bool:
    return True


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


def open_ingestor(fleet: FleetSettings, bus: EventBus, settings: IngestionSettings) -> Ingestor:
    """The ingestor of this fleet: its PII secret, its limits, its clock, onto `bus`."""
    return Ingestor(bus, PiiScrubber(pii_secret(fleet)), settings, clock=fleet.clock().now)


class Ingestor:
    def __init__(
        self,
        bus: EventBus,
        scrubber: PiiScrubber,
        settings: IngestionSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._bus = bus
        self._scrubber = scrubber
        self._settings = settings
        self._clock = clock

    @property
    def max_batch(self) -> int:
        """Entries per request a loader should send: the limit, or a thousand at most."""
        return min(1000, self._settings.max_batch_events)

    def bus_status(self) -> BusStatus:
        """How far behind the bus's consumers are and the dead letters waiting: ingestion
        owns the bus's writing end, so it answers for the bus (BusError when unreadable)."""
        return bus_status(self._bus)

    def erase_member(self, member_id: str) -> Erase:
        """Publish the erasure of a member on the members topic; the command published.

        The id goes through the scrubbing its events went through (a member known by email
        is erased under its token) and is validated like an event's member id. The erasure
        is dated by the fleet's clock: the member's events from before it are never applied
        again, by any service. Raises `BadMemberId`, or `BusError` when nothing was published.
        """
        command = Erase(
            member_id=self._member_id(member_id), erasure_id=str(uuid.uuid4()), at=self._clock()
        )
        self._bus.publish(MEMBERS_TOPIC, [command_message(command)])
        return command

    def _member_id(self, raw: str) -> str:
        if len(raw) > _MAX_RAW_ID:  # spare the scrubber's patterns a huge string
            raise BadMemberId(f"member_id is at most {MAX_ID_LENGTH} characters")
        member_id = str(self._scrubber.scrub(raw, "member_id"))
        problem = check_member_id(member_id)
        if problem is not None:
            raise BadMemberId(problem)
        return member_id

    def personal(self, member_id: str) -> bool:
        """True when `member_id` is an email or phone number (it goes on the bus as a token)."""
        return self._scrubber.finds(member_id, "member_id")

    def publish_events(
        self, payload: bytes, fmt: str = "native", in_time: Callable[[], bool] = _always
    ) -> Outcome:
        """Validate each event on its own; publish the valid ones keyed by member.

        `in_time` is asked right before anything is published: when it answers False (the
        caller's deadline has passed), nothing is, and `TooLate` is raised.
        """
        self._check_count(payload, fmt)
        # The common case, a native batch that validates in one pass without a detour
        # through Python dicts. What decides whether it holds personal data is the decoded
        # events themselves (`finds` applies the scrubber's own rules), never the raw bytes,
        # where an escape (`\u0040`) hides an "@".
        events = _all_valid(payload) if fmt in ("", "native") else None
        if events is not None and not any(self._scrubber.finds(event) for event in events):
            self._check_size(len(events), "events")
            return self._admit(list(enumerate(events)), Outcome(), in_time)
        try:
            # Scrubbed right after decoding: no mapping, no rejection reason, nothing
            # downstream ever sees an email or phone number in clear.
            body = self._scrubber.scrub(formats.read(fmt or "native", payload))
            translated = formats.translate_body(fmt or "native", body, self._clock())
        except ValueError as exc:
            raise BadPayload(str(exc)) from exc
        self._check_size(len(translated), "events")
        commands = self._member_commands(translated, formats.canonical(fmt))
        outcome, parsed = Outcome(), list[tuple[int, Event]]()
        for source in translated:
            parsed.extend((source.index, e) for e in self._events_of(source, outcome))
        return self._admit(parsed, outcome, in_time, commands)

    def _check_count(self, payload: bytes, fmt: str) -> None:
        """Refuse a body past the limit before any of its events is validated, scrubbed or
        translated: a few megabytes of `{}` would take seconds and a gigabyte for a 413."""
        limit = self._settings.max_batch_events
        # Each entry after the first follows a comma (a newline in JSON lines): with fewer
        # of them than the limit, a body is within it, and not worth counting.
        if payload.count(b",") + payload.count(b"\n") < limit:
            return
        try:
            count = formats.count(fmt or "native", payload)
        except ValueError as exc:  # an unknown format
            raise BadPayload(str(exc)) from exc
        if count is not None:
            self._check_size(count, "events")

    def _member_commands(self, translated: Sequence[Translated], fmt: str) -> list[MemberCommand]:
        """The links and consent changes the source events carry, once each per request.

        Their ids come from the scrubbed body, as the events' member ids do, so a link
        names a member exactly as the member's events do. An id no event could carry is
        left out (the event itself says why, when it has one).
        """
        commands: list[MemberCommand] = []
        seen: set[tuple[object, ...]] = set()
        for source in translated:
            identity = source.identity
            if identity is None or not _valid_id(identity.member_id):
                continue
            at = self._moment(identity.timestamp)
            for anonymous_id in identity.anonymous_ids:
                link = ("link", anonymous_id, identity.member_id)
                if _valid_id(anonymous_id) and link not in seen:
                    seen.add(link)
                    commands.append(Link(anonymous_id, identity.member_id, at, fmt))
            changes = {k: v for k, v in identity.consent.items() if k in CONSENT_KEYS}
            consent = ("consent", identity.member_id, tuple(sorted(changes.items())))
            if changes and consent not in seen:
                seen.add(consent)
                commands.append(Consent(identity.member_id, at, changes))
        return commands

    def _moment(self, timestamp: str | None) -> datetime:
        """When the source dated it, if within the accepted bounds; else now."""
        now = self._clock()
        if timestamp is None:
            return now
        try:
            moment = datetime.fromisoformat(timestamp)
        except ValueError:
            return now
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        if _time_problem(moment, self._settings.earliest_timestamp, self._latest()) is not None:
            return now
        return moment

    def _events_of(self, source: Translated, outcome: Outcome) -> list[Event]:
        if source.ignored:
            outcome.ignored += 1
            return []
        if source.error:
            outcome.rejected.append(Rejected(source.index, source.source_id, source.error))
            return []
        try:
            return [parse_event(raw) for raw in source.events]
        except ValidationError as exc:
            reason = describe_error(exc)
        except ValueError as exc:
            reason = str(exc)
        outcome.rejected.append(Rejected(source.index, _raw_id(source), reason))
        return []

    def _admit(
        self,
        indexed: list[tuple[int, Event]],
        outcome: Outcome,
        in_time: Callable[[], bool],
        commands: Sequence[MemberCommand] = (),
    ) -> Outcome:
        """Publish the events that pass the request-wide checks; say why the others did not.
        The request's member commands go first, on their own topic.

        Consumers apply an event id once, so a second event with the same id in one request
        would be dropped silently downstream: it is refused here, where the client hears it.
        """
        earliest, latest = self._settings.earliest_timestamp, self._latest()
        first_index: dict[str, int] = {}
        events = []
        for index, event in indexed:
            reason = _time_problem(event.timestamp, earliest, latest)
            if reason is None and event.event_id in first_index:
                reason = (
                    f"event_id: '{event.event_id}' is already used by event "
                    f"{first_index[event.event_id]} of this request; only that one is kept"
                )
            if reason is not None:
                own_id = event.event_id if "event_id" in event.model_fields_set else ""
                outcome.rejected.append(Rejected(index, own_id, reason))
                continue
            first_index[event.event_id] = index
            events.append(event)
        outcome.rejected.sort(key=lambda rejected: rejected.index)
        _check_in_time(in_time)
        if commands:
            self._bus.publish(MEMBERS_TOPIC, [command_message(c) for c in commands])
        shown = [e for e in events if e.type == EventType.IMPRESSION]
        done = [e for e in events if e.type != EventType.IMPRESSION] if shown else events
        # What was shown is the shop's doing, not the member's: on a topic of its own, which
        # only analytics (and the ranker's training) reads.
        if shown:
            self._bus.publish(IMPRESSIONS_TOPIC, event_records(shown))
        if done:
            self._bus.publish(EVENTS_TOPIC, event_records(done))
        outcome.accepted = [e.event_id for e in events]
        return outcome

    def _latest(self) -> datetime:
        return self._clock() + timedelta(seconds=self._settings.max_future_skew_s)

    def upsert_items(self, payload: bytes, in_time: Callable[[], bool] = _always) -> Outcome:
        """Validate catalog items; publish the valid ones keyed by item (none once `in_time`
        answers False: `TooLate`, as for events)."""
        try:
            raws = split_batch(payload, "items")
        except ValueError as exc:
            raise BadPayload(str(exc)) from exc
        self._check_size(len(raws), "items")
        outcome, items = _validate(raws, CatalogItem.model_validate, lambda i: i.item_id)
        messages = [Message(key=i.item_id, value=i.to_bytes()) for i in items]
        _check_in_time(in_time)
        self._bus.publish(CATALOG_TOPIC, messages)
        return outcome

    def _check_size(self, count: int, what: str) -> None:
        if count > self._settings.max_batch_events:
            raise TooManyEvents(
                f"{count} {what} in one request; at most {self._settings.max_batch_events}"
            )


def _check_in_time(in_time: Callable[[], bool]) -> None:
    if not in_time():
        raise TooLate("the caller's deadline passed before anything was published")


def _time_problem(moment: datetime, earliest: datetime, latest: datetime) -> str | None:
    if moment < earliest:
        return (
            f"timestamp: {moment.isoformat()} is before {earliest.isoformat()}, "
            "the earliest accepted"
        )
    if moment > latest:
        return (
            f"timestamp: {moment.isoformat()} is in the future (at most "
            f"{latest.isoformat()} is accepted)"
        )
    return None


# No id this long fits the bound even once its emails become tokens (an address has at
# most 254 characters, a token 36): refused unread.
_MAX_RAW_ID = 16 * MAX_ID_LENGTH


def _valid_id(value: str) -> bool:
    return check_member_id(value) is None


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event]


def _all_valid(payload: bytes) -> list[Event] | None:
    """Every event of a native body when all are valid, else None (the caller looks closer).

    Also None when a text field holds what a NaN or an infinite number becomes: this parser
    takes `NaN`, `Infinity` and `1e400`, which the strict decoder then refuses (as it would
    anywhere in the body), or finds to be strings after all.
    """
    try:
        events = _Batch.model_validate_json(payload).events
    except ValidationError:
        try:
            events = [Event.model_validate_json(payload)]
        except ValidationError:
            return None
    return None if _any_not_finite(events) else events


# What the models make of a number that is not finite in a text field, which they fill from
# numbers too (`"member_id": 17850`); every other field refuses such a number itself.
_NOT_FINITE = frozenset({"NaN", "inf", "-inf"})


_TEXT = (str, str | None)


def _text_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, info in model.model_fields.items() if info.annotation in _TEXT]


_event_texts = attrgetter(*_text_fields(Event))
_item_texts = attrgetter(*_text_fields(EventItem))
_lines = attrgetter("items")


def _any_not_finite(events: list[Event]) -> bool:
    """True when a text field of an event or of one of its lines is in `_NOT_FINITE`."""
    # Iterated in C (maps of attrgetters): no Python call per event on the fast path.
    lines = chain.from_iterable(map(_lines, events))
    texts = chain(
        chain.from_iterable(map(_event_texts, events)),
        chain.from_iterable(map(_item_texts, lines)),
    )
    return not _NOT_FINITE.isdisjoint(texts)


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
