"""Run a consumer group member in a background thread: poll, apply, dead-letter, commit.

Records are committed only after the handler has applied them, so a crash redelivers
what was in flight (at least once) and the handlers' idempotency makes that harmless.

A store or bus that cannot be reached (a transient error) pauses the worker, which retries
with backoff until it clears, however long that takes: the records are valid and must not
be dead-lettered. Only a record that fails on its own, with the store answering, goes to
the dead letters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from pydantic import ValidationError
from sqlalchemy import exc as sql_errors
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential_jitter,
)

from services.common.bus import (
    CATALOG_TOPIC,
    DEAD_LETTERS_TOPIC,
    EVENTS_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    BusError,
    EventBus,
    Record,
)
from services.common.dead_letters import encode
from services.common.events import AnyEvent, CatalogItem, describe_error, read_events
from services.common.members import MemberCommand, read_command
from services.common.metrics import CONSUMED, LAG

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """A record the handler cannot apply, with the reason, kept for inspection and replay."""

    record: Record
    reason: str


# Applies a batch of records; returns those it rejected as permanently unusable.
Handler = Callable[[Sequence[Record]], list[DeadLetter]]

# Errors that say the store or the bus is out of reach, not that a record is wrong.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sql_errors.OperationalError,
    sql_errors.InterfaceError,
    sql_errors.DisconnectionError,
    sql_errors.TimeoutError,
    BusError,
    ConnectionError,
    TimeoutError,
)


def transient(exc: BaseException) -> bool:
    """Whether retrying the same work later can succeed: the store or bus was unreachable,
    locked or restarting (as opposed to refusing the data)."""
    if isinstance(exc, sql_errors.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


class BusWorker:
    """One consumer group member fed from a background thread."""

    def __init__(
        self,
        bus: EventBus,
        group: str,
        topics: Sequence[str],
        handler: Handler,
        *,
        batch_size: int = 2000,
        attempts: int = 5,
        max_backoff_s: float = 5.0,
        commit: bool = True,
    ) -> None:
        """`commit=False` for state kept in memory, rebuilt from the log at each start: the
        group never commits, so it leaves nothing behind once dropped."""
        self._bus = bus
        self._commit = commit
        self._group = group
        self._topics = list(topics)
        self._applied_count = CONSUMED.labels(group, "applied")
        self._dead_count = CONSUMED.labels(group, "dead_lettered")
        self._handler = handler
        self._batch_size = batch_size
        self._attempts = attempts
        self._max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self.applied = 0
        self.dead_lettered = 0
        self._last_error = ""
        # How many times the worker paused on an unreachable store or bus.
        self.transient_failures = 0

    # What the lag metric reads (services/common/metrics.py).
    @property
    def bus(self) -> EventBus:
        return self._bus

    @property
    def group(self) -> str:
        return self._group

    @property
    def topics(self) -> Sequence[str]:
        return self._topics

    @property
    def commits(self) -> bool:
        return self._commit

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"bus-{self._group}", daemon=True)
        self._thread.start()
        LAG.track(self)

    def stop(self, timeout_s: float = 10.0) -> None:
        LAG.untrack(self)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def drain(self, idle_polls: int = 1) -> int:
        """Apply everything already on the bus in the caller's thread, then return the count."""
        before = self.applied
        with self._bus.consumer(self._group, self._topics) as consumer:
            idle = 0
            while idle < idle_polls:
                records = consumer.poll(self._batch_size, timeout_s=0.05)
                if not records:
                    idle += 1
                    continue
                self._apply(records)
                consumer.commit()
        return self.applied - before

    def _run(self) -> None:
        try:
            # A bus that drops away mid-poll: reopen the consumer once it is back; what was
            # polled and not committed is redelivered.
            self._patiently("reading the bus")(self._consume)
        except BaseException as exc:  # the service reports itself unhealthy instead of dying
            if self._stop.is_set() and transient(exc):
                return
            self.failure = exc
            log.exception("consumer group %s stopped", self._group)

    def _consume(self) -> None:
        with self._bus.consumer(self._group, self._topics) as consumer:
            while not self._stop.is_set():
                records = consumer.poll(self._batch_size, timeout_s=0.2)
                if records:
                    self._apply(records)
                    if self._commit:
                        consumer.commit()

    def _apply(self, records: Sequence[Record]) -> None:
        rejected = self._with_retries(records)
        if rejected is None:
            # The batch keeps failing as a whole: find the records at fault one by one so
            # that one bad record cannot hold back every record after it.
            rejected = []
            for record in records:
                one = self._with_retries([record], attempts=2)
                rejected.extend(one if one is not None else [DeadLetter(record, self._last_error)])
        if rejected:
            letters = [encode(d.record, self._group, d.reason) for d in rejected]
            self._patiently("dead-lettering")(self._bus.publish, DEAD_LETTERS_TOPIC, letters)
            self.dead_lettered += len(rejected)
            self._dead_count.inc(len(rejected))
            for letter in rejected:
                log.warning("dead-lettered %s: %s", letter.record.key, letter.reason)
        self.applied += len(records) - len(rejected)
        self._applied_count.inc(len(records) - len(rejected))

    def _with_retries(
        self, records: Sequence[Record], attempts: int | None = None
    ) -> list[DeadLetter] | None:
        """The handler's rejections, or None when it failed `attempts` times on the records
        themselves. Transient failures do not count: they are retried until they clear."""
        apply = self._patiently(f"applying {len(records)} records")
        for attempt in range(attempts or self._attempts):
            if attempt and self._stop.wait(min(0.1 * 2**attempt, self._max_backoff_s)):
                break
            try:
                return apply(self._handler, records)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "group %s: applying %d records failed: %s", self._group, len(records), exc
                )
        if self._stop.is_set():
            raise InterruptedError("stopping before the batch could be applied")
        return None

    def _pause_for(self, seconds: float) -> None:
        self._stop.wait(seconds)  # wakes at once when the worker stops

    def _patiently(self, doing: str) -> Retrying:
        """Retries transient errors with backoff until they clear or the worker stops."""

        def pause(state: RetryCallState) -> None:
            self.transient_failures += 1
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "group %s: %s paused (attempt %d), store or bus unreachable: %s",
                self._group,
                doing,
                state.attempt_number,
                error,
            )

        return Retrying(
            retry=retry_if_exception(transient),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._max_backoff_s, jitter=0.1),
            stop=stop_when_event_set(self._stop),
            sleep=self._pause_for,
            before_sleep=pause,
            reraise=True,
        )


@dataclass
class Decoded:
    events: list[AnyEvent]
    items: list[CatalogItem]
    dead: list[DeadLetter]
    # Members-topic commands, in bus order; a handler applies them before the events.
    commands: list[MemberCommand] = field(default_factory=list)


# Topics whose records carry native events: members' own, and what was shown to them.
EVENT_TOPICS = frozenset({EVENTS_TOPIC, IMPRESSIONS_TOPIC})


def decode(records: Sequence[Record]) -> Decoded:
    """Split a polled batch into events, catalog items and member commands; what cannot
    be read is dead-lettered."""
    out = Decoded([], [], [])
    for record in records:
        try:
            if record.topic in EVENT_TOPICS:
                out.events.extend(read_events(record.value))
            elif record.topic == CATALOG_TOPIC:
                out.items.append(CatalogItem.from_bytes(record.value))
            elif record.topic == MEMBERS_TOPIC:
                out.commands.append(read_command(record.value))
            else:
                out.dead.append(DeadLetter(record, f"unexpected topic {record.topic}"))
        except ValidationError as exc:
            out.dead.append(DeadLetter(record, f"unreadable record: {describe_error(exc)}"))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # Not JSON at all is as unreadable as the wrong shape: no retry makes it better.
            out.dead.append(DeadLetter(record, f"unreadable command: {exc}"))
    return out
