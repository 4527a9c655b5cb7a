"""The segments desk of the profiles service: definitions, sizes, members, exports.

It reads profiles only through the ProfileStore interface, page by page, so sizes and
exports take constant memory however many members the store holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import islice

from services.common.clock import Clock
from services.profiles import audiences
from services.profiles.audiences import Audience, Count, compile_audience
from services.profiles.discovery import Discovery, discover
from services.profiles.portrait import Portrait, Portraitist, consent_of
from services.profiles.segments import (
    BUILTIN_NAMES,
    BuiltinSegment,
    SegmentBook,
    SegmentDefinition,
    builtin_segments,
    checked,
    members,
)
from services.profiles.store import ProfileStore

# Custom definitions are re-read this often: another replica may have changed them.
DEFINITIONS_TTL_S = 1.0
MAX_PAGE = 1000
EXPORT_PAGE = 500
# Days of sizes a segment's trend shows.
TREND_DAYS = 30


@dataclass(frozen=True)
class Sizes:
    sizes: dict[str, int]
    members: int
    as_of: datetime


@dataclass(frozen=True)
class Match:
    """One member against audiences."""

    matched: list[bool]
    portrait: Portrait | None  # None: no event of the member was ever seen
    consent: Mapping[str, bool]
    consent_at: datetime | None


class UnknownSegment(KeyError):
    """No segment of that name."""


class Segmenter:
    def __init__(
        self,
        store: ProfileStore,
        portraitist: Portraitist,
        clock: Clock,
        sizes_ttl_s: float,
        trend_days: int = TREND_DAYS,
    ) -> None:
        self._store = store
        self._trend_days = trend_days
        self._portraitist = portraitist
        self._clock = clock
        self._sizes_ttl_s = sizes_ttl_s
        self._lock = threading.Lock()
        self._book: SegmentBook | None = None
        self._book_read = float("-inf")
        self._sizes: Sizes | None = None
        self._sizes_read = float("-inf")

    def book(self) -> SegmentBook:
        """Every segment, built in first, compiled (re-read at most every second)."""
        with self._lock:
            if self._book is None or time.monotonic() - self._book_read > DEFINITIONS_TTL_S:
                self._book = SegmentBook([*builtin_segments(), *self._store.segments()])
                self._book_read = time.monotonic()
            return self._book

    def definition(self, name: str) -> SegmentDefinition:
        for definition in self.book().definitions:
            if definition.name == name:
                return definition
        raise UnknownSegment(name)

    def sizes(self) -> Sizes:
        """Every segment's size, counted in one pass (kept for `sizes_ttl_s`)."""
        book = self.book()
        with self._lock:
            cached = self._sizes
            fresh = time.monotonic() - self._sizes_read <= self._sizes_ttl_s
            if cached is not None and fresh and set(cached.sizes) == _names(book):
                return cached
        now = self._clock.now()
        counted, looked = book.sizes(
            self._store.iter_profiles(), self._portraitist, self._store.scoring(), now
        )
        found = Sizes(counted, looked, now)
        # Every count is the day's point of each segment's trend (the day's last one wins).
        self._store.record_sizes(now.date(), counted, self._trend_days)
        with self._lock:
            self._sizes, self._sizes_read = found, time.monotonic()
        return found

    def trend(self) -> dict[str, list[tuple[date, int]]]:
        """Each segment's size per day over the trend's days, oldest first (days nobody
        counted on are missing)."""
        since = self._clock.now().date() - timedelta(days=self._trend_days - 1)
        return self._store.size_history(since)

    def size_of(self, definition: SegmentDefinition) -> tuple[int, datetime]:
        now = self._clock.now()
        counted, _ = SegmentBook([definition]).sizes(
            self._store.iter_profiles(), self._portraitist, self._store.scoring(), now
        )
        return counted[definition.name], now

    def put(
        self, name: str, condition: str, description: str, create_only: bool
    ) -> tuple[SegmentDefinition, int, datetime]:
        """Save a definition (DefinitionError naming the bad field, BuiltinSegment); the
        saved definition and its size now."""
        definition = checked(name, condition, description)
        saved = self._store.put_segment(definition, self._clock.now(), create_only)
        self._forget()
        size, now = self.size_of(saved)
        return saved, size, now

    def delete(self, name: str) -> None:
        if name in BUILTIN_NAMES:
            raise BuiltinSegment(f"'{name}' is a lifecycle segment: it cannot be deleted")
        if not self._store.delete_segment(name):
            raise UnknownSegment(name)
        self._forget()

    def page(
        self, name: str, channel: str | None, after: str | None, limit: int
    ) -> tuple[list[Portrait], str | None]:
        """Up to `limit` members after the member id `after`, and where the next page starts
        (None when this one reached the end)."""
        return _page(self._members(name, channel, after), limit)

    def export(self, name: str, channel: str | None) -> Iterator[list[Portrait]]:
        """Every member of the segment, in pages of EXPORT_PAGE."""
        found = self._members(name, channel, None)
        while page := list(islice(found, EXPORT_PAGE)):
            yield page

    def discover(
        self, k: int, top_categories: int, window_days: float | None
    ) -> tuple[Discovery, datetime]:
        """Segments suggested by clustering every member's portrait as of now (one pass,
        read only; ValueError for arguments out of range, NotEnoughMembers)."""
        now, scoring = self._clock.now(), self._store.scoring()
        portraits = (self._portraitist.draw(p, scoring, now) for p in self._store.iter_profiles())
        return discover(portraits, k, top_categories, window_days), now

    def member_of(self, portrait: Portrait) -> list[str]:
        return self.book().member_of(portrait)

    def audience(self, segments: Sequence[str], condition: str) -> Audience:
        """The audience compiled against the segments defined now (AudienceError)."""
        return compile_audience(self.book(), segments, condition)

    def count_audience(self, audience: Audience) -> tuple[Count, datetime]:
        """The audience's size and reach per channel, counted in one pass, and when."""
        now = self._clock.now()
        found = audiences.count(
            self._store.iter_profiles(), self._portraitist, self._store.scoring(), now, audience
        )
        return found, now

    def audience_page(
        self, audience: Audience, channel: str | None, after: str | None, limit: int
    ) -> tuple[list[Portrait], str | None]:
        """As `page`, for an audience."""
        found = audiences.members(
            self._store.iter_profiles(after=after),
            self._portraitist,
            self._store.scoring(),
            self._clock.now(),
            audience,
            channel,
        )
        return _page(found, limit)

    def match(self, member_id: str, wanted: Sequence[Audience]) -> Match:
        """Which audiences the member is in now. On the offers path: one profile read (two
        for a member never seen, whose consent may still have been given)."""
        profile = self._store.get(member_id, recent_limit=0, purchases=False)
        if profile is None:
            choices, at = self._store.consent_choices(member_id)
            consent = consent_of(self._portraitist.consent_defaults, choices)
            return Match([False] * len(wanted), None, consent, at)
        portrait = self._portraitist.draw(profile, self._store.scoring(), self._clock.now())
        matched = audiences.matches(portrait, wanted)
        return Match(matched, portrait, portrait.consent, profile.consent_at)

    def _members(self, name: str, channel: str | None, after: str | None) -> Iterator[Portrait]:
        definition = self.definition(name)
        now = self._clock.now()
        return members(
            self._store.iter_profiles(after=after),
            self._portraitist,
            self._store.scoring(),
            now,
            definition,
            channel,
        )

    def _forget(self) -> None:
        with self._lock:
            self._book, self._sizes = None, None


def _page(found: Iterator[Portrait], limit: int) -> tuple[list[Portrait], str | None]:
    """Up to `limit` (1 to MAX_PAGE) of `found`, and the last one's id when the page is full
    (more may follow), else None."""
    limit = max(1, min(limit, MAX_PAGE))
    page = list(islice(found, limit))
    return page, page[-1].profile.member_id if len(page) == limit else None


def _names(book: SegmentBook) -> set[str]:
    return {d.name for d in book.definitions}
