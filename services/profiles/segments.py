"""Segments: named conditions over members' portraits. No storage, no transport.

The lifecycle segments are built in (one per lifecycle, read only); a marketer defines
the others by a condition in the language of services/profiles/conditions.py, which also
reads `consent` and, here, the rule tags besides the manual ones. A member without
personalization consent is in no segment: nothing from their portrait drives targeting.
Definitions and sizes: docs/segments.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from services.profiles.conditions import LIFECYCLES, Condition, ConditionError, parse
from services.profiles.domain import MemberProfile
from services.profiles.portrait import Portrait, Portraitist, segment_values
from services.profiles.scoring import Scoring

SEGMENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(SEGMENT_NAME_PATTERN)
MAX_DESCRIPTION = 500
LIFECYCLE = "lifecycle"
CUSTOM = "custom"

LIFECYCLE_DESCRIPTIONS = {
    "new": "First order within the last `new_days` (or, without an order, first seen then).",
    "active": "Ordered within `at_risk_days`, not new, not high-value or loyal.",
    "high-value": "Ordered within `at_risk_days`, M score at least `high_value_min_m_score`.",
    "loyal": "Ordered within `at_risk_days`, F score at least `loyal_min_f_score`.",
    "at-risk": "No order for more than `at_risk_days`, up to `churned_days`.",
    "churned": "No order for more than `churned_days`.",
    "prospect": "Seen, never ordered, first seen longer ago than `new_days`.",
}


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    condition: str
    description: str = ""
    kind: str = CUSTOM
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def builtin(self) -> bool:
        return self.kind == LIFECYCLE


class DefinitionError(ValueError):
    """A segment definition that cannot be saved; `field` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class BuiltinSegment(ValueError):
    """The lifecycle segments are defined by the lifecycle settings, not through the API."""


def builtin_segments() -> list[SegmentDefinition]:
    return [
        SegmentDefinition(
            name=name,
            condition=f"lifecycle == '{name}'",
            description=LIFECYCLE_DESCRIPTIONS[name],
            kind=LIFECYCLE,
        )
        for name in LIFECYCLES
    ]


BUILTIN_NAMES = frozenset(LIFECYCLES)


def check_name(name: str) -> str | None:
    """Why `name` cannot name a segment, or None when it can."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            "a segment name is 1 to 64 lower-case letters, digits, '-' or '_', starting "
            "with a letter or digit"
        )
    return None


def checked(name: str, condition: str, description: str) -> SegmentDefinition:
    """The definition, or DefinitionError naming the field that is wrong."""
    problem = check_name(name)
    if problem:
        raise DefinitionError("name", problem)
    if name in BUILTIN_NAMES:
        raise BuiltinSegment(
            f"'{name}' is a lifecycle segment: its definition is the lifecycle settings "
            "(RECOFLEET_PROFILES_LIFECYCLE__*)"
        )
    try:
        parse(condition)
    except ConditionError as exc:
        raise DefinitionError("condition", str(exc)) from None
    if len(description) > MAX_DESCRIPTION:
        raise DefinitionError("description", f"at most {MAX_DESCRIPTION} characters")
    return SegmentDefinition(name=name, condition=condition.strip(), description=description)


class SegmentBook:
    """The segments a fleet has, compiled once, to place members in them."""

    def __init__(self, definitions: Iterable[SegmentDefinition]) -> None:
        self.definitions = list(definitions)
        self._tests: list[tuple[str, Condition]] = [
            (d.name, parse(d.condition)) for d in self.definitions
        ]
        self._by_name = dict(self._tests)

    def condition(self, name: str) -> Condition | None:
        """The compiled condition of the segment `name`, or None when there is none."""
        return self._by_name.get(name)

    def member_of(self, portrait: Portrait) -> list[str]:
        """The names of the segments the member is in."""
        if not portrait.consent.get("personalization", False):
            return []
        seen = segment_values(portrait)
        return [name for name, test in self._tests if test(seen)]

    def sizes(
        self,
        profiles: Iterable[MemberProfile],
        portraitist: Portraitist,
        scoring: Scoring | None,
        now: datetime,
    ) -> tuple[dict[str, int], int]:
        """Members per segment over `profiles` (one pass), and how many were looked at."""
        sizes = dict.fromkeys((d.name for d in self.definitions), 0)
        looked = 0
        for profile in profiles:
            looked += 1
            for name in self.member_of(portraitist.draw(profile, scoring, now)):
                sizes[name] += 1
        return sizes, looked


def members(
    profiles: Iterable[MemberProfile],
    portraitist: Portraitist,
    scoring: Scoring | None,
    now: datetime,
    segment: SegmentDefinition,
    channel: str | None = None,
) -> Iterator[Portrait]:
    """The portraits of the segment's members among `profiles`, in their order; with a
    channel, only those who consent to it."""
    book = SegmentBook([segment])
    for profile in profiles:
        portrait = portraitist.draw(profile, scoring, now)
        if channel and not portrait.consent.get(channel, False):
            continue
        if book.member_of(portrait):
            yield portrait
