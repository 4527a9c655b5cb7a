"""The outcomes of a campaign: its exposed members against its held-out control group.

campaigns publishes an exposure (services/common/exposures.py) each time it shows or sends
an offer to a member (group "treatment") or holds a member of the audience out of it
(group "control"). The rules, as the store and `campaign_outcomes` apply them:

1. **Members**: a member counts in the group of their first exposure to the campaign (by
   time, then exposure id). Being in both groups is impossible by construction; a member
   who still is counts once, in that first group, and the report says how many.
2. **Window**: a member's purchases from their first exposure until `window_days` after it
   count (first exposure <= purchase < first exposure + window), every purchase, with the
   offer or not: the control group's purchases are what the treatment group would have
   bought anyway, so the difference between the groups is what the campaign changed.
3. **Converters** are the members with at least one such purchase; **revenue** is those
   purchases' order value less the refunds of those orders (whenever they came, never more
   than the order's value).
4. **Coupon orders** are treatment members' purchases in the window whose event carried
   one of the coupon codes they were exposed with (trimmed, case ignored).
5. A visitor's exposures and purchases count for the member they were linked to; an erased
   member's are gone.

Members are the unit: conversion rate is the share of a group's members who converted
(a Wilson interval), revenue per member a mean (t interval); treatment is compared with
control by Welch's t-test on per-member values (0/1 conversions, revenue), the large-sample
equivalent of an unpooled two-proportion z-test for conversion.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.analytics.stats import (
    WELCH,
    Array,
    Difference,
    Estimate,
    mean_difference,
    mean_estimate,
    proportion_estimate,
)
from services.common.coupons import coupon_codes
from services.common.events import MAX_ID_LENGTH, check_member_id
from services.common.exposures import Exposure

TREATMENT = "treatment"
CONTROL = "control"
# The order a report shows the groups in.
GROUPS = (TREATMENT, CONTROL)
DEFAULT_WINDOW_DAYS = 30.0
CONVERSION_METHOD = f"{WELCH} on per-member 0/1 conversions"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class GroupMembers:
    """The members of one group, one value per member in the same order: whether they
    bought in their window (1.0 or 0.0) and what those purchases brought less refunds."""

    converted: Array
    revenue: Array

    @classmethod
    def of(cls, rows: Iterable[tuple[float, float]]) -> GroupMembers:
        """From (converted, revenue) per member."""
        table = np.asarray(list(rows), dtype=np.float64).reshape(-1, 2)
        return cls(np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1]))

    @property
    def members(self) -> int:
        return int(self.converted.size)


@dataclass(frozen=True)
class CampaignFigures:
    """What the store read for a campaign: per group its members' figures, treatment
    exposures per channel, coupon orders, members found in both groups, and members whose
    window had not ended yet."""

    groups: dict[str, GroupMembers]
    exposures: dict[str, int] = field(default_factory=dict)
    coupon_orders: int = 0
    crossed: int = 0
    open_windows: int = 0


@dataclass(frozen=True)
class GroupOutcome:
    name: str
    members: int
    converters: int
    revenue: float
    conversion_rate: Estimate
    revenue_per_member: Estimate


@dataclass(frozen=True)
class CampaignOutcomes:
    """A campaign's figures per group, treatment against control per metric, and warnings
    for a reader (no exposures, no control group, groups too small to tell)."""

    campaign_id: str
    confidence: float
    window_days: float
    groups: tuple[GroupOutcome, ...]
    differences: dict[str, Difference]
    exposures: dict[str, int]
    coupon_orders: int
    warnings: tuple[str, ...]


def campaign_outcomes(
    campaign_id: str,
    figures: CampaignFigures,
    confidence: float,
    window_days: float,
    *,
    min_members: int,
) -> CampaignOutcomes:
    """The outcomes of a campaign from its members' figures. A campaign without exposures
    has no groups and a warning that says so."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    empty = GroupMembers.of([])
    members = {name: figures.groups.get(name, empty) for name in GROUPS}
    exposed = any(found.members for found in members.values())
    groups = tuple(_group(name, found, confidence) for name, found in members.items())
    differences = _differences(members, confidence) if exposed else {}
    return CampaignOutcomes(
        campaign_id=campaign_id,
        confidence=confidence,
        window_days=window_days,
        groups=groups if exposed else (),
        differences=differences,
        exposures=dict(figures.exposures),
        coupon_orders=figures.coupon_orders,
        warnings=tuple(_warnings(campaign_id, members, figures, window_days, min_members)),
    )


def _group(name: str, found: GroupMembers, confidence: float) -> GroupOutcome:
    converters = int(found.converted.sum())
    return GroupOutcome(
        name=name,
        members=found.members,
        converters=converters,
        revenue=float(found.revenue.sum()),
        conversion_rate=proportion_estimate(converters, found.members, confidence),
        revenue_per_member=mean_estimate(found.revenue, confidence),
    )


def _differences(members: Mapping[str, GroupMembers], confidence: float) -> dict[str, Difference]:
    control, treatment = members[CONTROL], members[TREATMENT]
    conversion = mean_difference(control.converted, treatment.converted, confidence)
    # Each group's own estimate is Wilson's (see stats.proportion_estimate), not the
    # t interval of 0/1 values the test itself rests on.
    conversion = dataclasses.replace(
        conversion,
        control=_group(CONTROL, control, confidence).conversion_rate,
        treatment=_group(TREATMENT, treatment, confidence).conversion_rate,
        method=CONVERSION_METHOD,
    )
    return {
        "conversion_rate": conversion,
        "revenue_per_member": mean_difference(control.revenue, treatment.revenue, confidence),
    }


def _warnings(
    campaign_id: str,
    members: Mapping[str, GroupMembers],
    figures: CampaignFigures,
    window_days: float,
    min_members: int,
) -> list[str]:
    if not any(found.members for found in members.values()):
        return [
            f"no exposures yet: nobody was exposed to or held out from campaign '{campaign_id}'"
        ]
    warnings = []
    if not members[CONTROL].members:
        warnings.append("no control group: uplift cannot be measured")
    if not members[TREATMENT].members:
        warnings.append("no treatment group: every member so far was held out")
    small = [name for name, found in members.items() if 0 < found.members < min_members]
    if small:
        names = ", ".join(f"'{name}'" for name in small)
        warnings.append(
            f"fewer than {min_members} members per group ({names}): too few for any "
            "difference to be told from chance"
        )
    if figures.crossed:
        warnings.append(
            f"{figures.crossed} {_members(figures.crossed)} in both groups (each counted in "
            "the group of their first exposure): the hold-out was not kept"
        )
    if figures.open_windows:
        warnings.append(
            f"{figures.open_windows} {_members(figures.open_windows)} first exposed less than "
            f"{window_days:g} days ago: their window is still open and the figures will grow"
        )
    return warnings


def _members(count: int) -> str:
    return "member was" if count == 1 else "members were"


def describe(window_days: float) -> str:
    """How a campaign's purchases were counted, in words, for a report's reader."""
    return (
        "Members count in the group (treatment: shown or sent the offer; control: held out) "
        "of their first exposure to the campaign. Every purchase a member made from that "
        f"exposure until {window_days:g} days after it counts, with the offer or not; "
        "refunds of those orders are deducted. Coupon orders are treatment members' "
        "purchases in that window carrying a code they were given. A visitor's exposures "
        "and purchases count for the member they were linked to."
    )


def coupon_of(context: Mapping[str, Any]) -> str | None:
    """The coupon code an order's event carried, as compared (coupon_key): its first,
    order-level codes before line-level ones (services/common/coupons.py). None when there
    is no usable code."""
    codes = coupon_codes(context)
    return codes[0] if codes else None


def exposure_problem(exposure: Exposure) -> str | None:
    """Why a decoded exposure cannot be kept (ids the store could not hold), or None."""
    for name in ("exposure_id", "campaign_id", "member_id"):
        problem = check_member_id(getattr(exposure, name), name)
        if problem:
            return problem
    for name in ("channel", "offer_id", "coupon_code", "tier"):
        value: str = getattr(exposure, name)
        if len(value) > MAX_ID_LENGTH or _CONTROL_CHARACTERS.search(value):
            return f"{name} must be at most {MAX_ID_LENGTH} characters, no control characters"
    return None


def by_exposure_id(exposures: Sequence[Exposure]) -> dict[str, Exposure]:
    """The first exposure of each id (a batch may repeat one)."""
    first: dict[str, Exposure] = {}
    for exposure in exposures:
        first.setdefault(exposure.exposure_id, exposure)
    return first
