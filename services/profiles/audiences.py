"""Audiences: who a campaign targets. No storage, no transport.

An audience is the members in any of its segments (every member when it names none) for
whom its condition holds (always, when it has none). As with segments, a member without
personalization consent is in no audience, and the condition reads the values a segment
reads (rule tags among `tags`).

The parts are evaluated one by one rather than joined into one condition text: each part
fits the language's length and depth limits on its own but a join of them may not, and a
wrong condition's positions must be those of the text the caller sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from services.common.members import CHANNELS
from services.profiles.conditions import Condition, ConditionError, parse
from services.profiles.domain import MemberProfile
from services.profiles.portrait import Portrait, Portraitist, segment_values
from services.profiles.scoring import Scoring
from services.profiles.segments import SegmentBook

# Campaigns send the same few conditions on every offer request: parse each once.
CONDITION_CACHE = 256


class AudienceError(ValueError):
    """An audience that names no segment we have or a condition that does not parse;
    `field` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


@dataclass(frozen=True)
class Audience:
    """An audience compiled: its segments' conditions and its own."""

    segments: tuple[Condition, ...]  # empty: every member
    condition: Condition | None  # None: no narrowing

    def holds(self, seen: Mapping[str, Any]) -> bool:
        """Whether a consenting member with these segment values is in the audience."""
        if self.segments and not any(test(seen) for test in self.segments):
            return False
        return self.condition is None or self.condition(seen)


@dataclass(frozen=True)
class Count:
    members: int
    by_channel: dict[str, int]


def compile_audience(book: SegmentBook, segments: Sequence[str], condition: str) -> Audience:
    """The audience, or AudienceError naming the unknown segment or the wrong condition."""
    tests = []
    for name in segments:
        test = book.condition(name)
        if test is None:
            raise AudienceError("segments", f"no segment '{name}'")
        tests.append(test)
    return Audience(tuple(tests), _condition(condition))


def _condition(text: str) -> Condition | None:
    if not text.strip():
        return None
    try:
        return _parsed(text)
    except ConditionError as exc:
        raise AudienceError("condition", str(exc)) from None


@lru_cache(maxsize=CONDITION_CACHE)
def _parsed(text: str) -> Condition:
    return parse(text)


def matches(portrait: Portrait, audiences: Sequence[Audience]) -> list[bool]:
    """For each audience, whether the member is in it (their values read once)."""
    if not portrait.consent.get("personalization", False):
        return [False] * len(audiences)
    seen = segment_values(portrait)
    return [audience.holds(seen) for audience in audiences]


def members(
    profiles: Iterable[MemberProfile],
    portraitist: Portraitist,
    scoring: Scoring | None,
    now: datetime,
    audience: Audience,
    channel: str | None = None,
) -> Iterator[Portrait]:
    """The portraits of the audience's members among `profiles`, in their order; with a
    channel, only those who consent to it."""
    for profile in profiles:
        portrait = portraitist.draw(profile, scoring, now)
        if channel and not portrait.consent.get(channel, False):
            continue
        if matches(portrait, [audience])[0]:
            yield portrait


def count(
    profiles: Iterable[MemberProfile],
    portraitist: Portraitist,
    scoring: Scoring | None,
    now: datetime,
    audience: Audience,
) -> Count:
    """The audience's members among `profiles` (one pass), and per channel those of them
    who consent to it."""
    total, by_channel = 0, dict.fromkeys(CHANNELS, 0)
    for portrait in members(profiles, portraitist, scoring, now, audience):
        total += 1
        for channel in CHANNELS:
            if portrait.consent.get(channel, False):
                by_channel[channel] += 1
    return Count(total, by_channel)
