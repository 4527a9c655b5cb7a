"""The report of an experiment: per variant figures, the differences to the control, the split.

The store hands over one row of figures per member of the experiment (members with an
impression of it within the report's window), grouped by the variant each member was shown
first; everything here is computed from those arrays with services/analytics/stats.py, so a
report over many members costs a few array operations, never a pass over events.

Members are the unit: CTR and add-to-cart rate are ratios of per-member sums (delta
method), conversion rate (the share of members with an attributed purchase) and revenue
per member are means (Welch's t-test), and revenue per member is also compared after CUPED
with each member's spend before the experiment as the covariate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from services.analytics.stats import (
    Array,
    Difference,
    Estimate,
    SrmCheck,
    cuped_difference,
    mean_difference,
    mean_estimate,
    ratio_difference,
    ratio_estimate,
    sample_ratio_mismatch,
)

METRICS = (
    "ctr",
    "add_to_cart_rate",
    "conversion_rate",
    "revenue_per_member",
    "revenue_per_member_cuped",
)
DEFAULT_MIN_MEMBERS = 100


@dataclass(frozen=True)
class MemberFigures:
    """The members of one variant: each array holds one value per member, in the same order.

    `revenue` is attributed revenue less what refunds reversed; `pre_spend` what the member
    spent (all purchases, less refunds) before the experiment, CUPED's covariate.
    """

    impressions: Array
    clicks: Array
    carts: Array
    purchases: Array
    revenue: Array
    pre_spend: Array

    @classmethod
    def of(cls, rows: Iterable[Sequence[float]]) -> MemberFigures:
        """From (impressions, clicks, carts, purchases, revenue, pre_spend) per member."""
        table = np.asarray(list(rows), dtype=np.float64).reshape(-1, 6)
        return cls(*(np.ascontiguousarray(table[:, column]) for column in range(6)))

    @property
    def members(self) -> int:
        return int(self.impressions.size)

    @property
    def converted(self) -> Array:
        """1 for a member with an attributed purchase, else 0."""
        return (self.purchases > 0).astype(np.float64)


@dataclass(frozen=True)
class ExperimentFigures:
    """What the store read for a report: per variant (the first one each member was shown)
    its members' figures, how many members were shown more than one variant, and the
    window read (`started_at` resolved to the first impression when none was asked)."""

    variants: dict[str, MemberFigures]
    crossed: int = 0
    started_at: datetime | None = None
    stopped_at: datetime | None = None


@dataclass(frozen=True)
class VariantReport:
    """One variant's totals and estimates; `differences` (metric -> against the control, in
    METRICS order) is empty for the control itself."""

    name: str
    share: float
    members: int
    impressions: int
    clicks: int
    carts: int
    purchases: int
    revenue: float
    ctr: Estimate
    add_to_cart_rate: Estimate
    conversion_rate: Estimate
    revenue_per_member: Estimate
    differences: dict[str, Difference] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentReport:
    """Every figure of an experiment's report. `warnings` come first for a reader: a broken
    split, no impressions, members in several variants, variants too small to tell."""

    experiment_id: str
    control: str
    confidence: float
    variants: tuple[VariantReport, ...]
    sample_ratio: SrmCheck
    warnings: tuple[str, ...]
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    # Members shown more than one variant (each counted in the first).
    crossed: int = 0
    # Members first shown a variant the experiment does not define (left out), per variant.
    unknown: dict[str, int] = field(default_factory=dict)


def report(
    experiment_id: str,
    shares: Mapping[str, float],
    control: str,
    started_at: datetime | None,
    stopped_at: datetime | None,
    confidence: float,
    figures: ExperimentFigures,
    *,
    min_members: int = DEFAULT_MIN_MEMBERS,
) -> ExperimentReport:
    """The report of an experiment with `shares` (variant -> share, in the order to show)
    whose `control` the other variants are compared with, at `confidence`.

    `started_at` and `stopped_at` are the window asked (the figures' own window wins when
    the store resolved one). ValueError for a control that is not a variant, shares that
    are not positive, or a confidence outside (0, 1).
    """
    if control not in shares:
        raise ValueError(f"control: no variant '{control}'; variants: {list(shares)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    empty = MemberFigures.of([])
    members = {name: figures.variants.get(name, empty) for name in shares}
    unknown = {
        name: found.members
        for name, found in figures.variants.items()
        if name not in shares and found.members
    }
    sample_ratio = sample_ratio_mismatch(
        {name: found.members for name, found in members.items()}, shares
    )
    baseline = members[control]
    variants = tuple(
        _variant(
            name,
            shares[name],
            found,
            None if name == control else baseline,
            confidence,
        )
        for name, found in members.items()
    )
    return ExperimentReport(
        experiment_id=experiment_id,
        control=control,
        confidence=confidence,
        variants=variants,
        sample_ratio=sample_ratio,
        warnings=tuple(_warnings(sample_ratio, members, figures.crossed, unknown, min_members)),
        started_at=figures.started_at or started_at,
        stopped_at=figures.stopped_at or stopped_at,
        crossed=figures.crossed,
        unknown=unknown,
    )


def _variant(
    name: str,
    share: float,
    found: MemberFigures,
    control: MemberFigures | None,
    confidence: float,
) -> VariantReport:
    differences: dict[str, Difference] = {}
    if control is not None:
        differences = {
            "ctr": ratio_difference(
                control.clicks, control.impressions, found.clicks, found.impressions, confidence
            ),
            "add_to_cart_rate": ratio_difference(
                control.carts, control.impressions, found.carts, found.impressions, confidence
            ),
            "conversion_rate": mean_difference(control.converted, found.converted, confidence),
            "revenue_per_member": mean_difference(control.revenue, found.revenue, confidence),
            "revenue_per_member_cuped": cuped_difference(
                control.revenue, control.pre_spend, found.revenue, found.pre_spend, confidence
            ),
        }
    return VariantReport(
        name=name,
        share=share,
        members=found.members,
        impressions=int(found.impressions.sum()),
        clicks=int(found.clicks.sum()),
        carts=int(found.carts.sum()),
        purchases=int(found.purchases.sum()),
        revenue=float(found.revenue.sum()),
        ctr=ratio_estimate(found.clicks, found.impressions, confidence),
        add_to_cart_rate=ratio_estimate(found.carts, found.impressions, confidence),
        conversion_rate=mean_estimate(found.converted, confidence),
        revenue_per_member=mean_estimate(found.revenue, confidence),
        differences=differences,
    )


def _warnings(
    sample_ratio: SrmCheck,
    members: Mapping[str, MemberFigures],
    crossed: int,
    unknown: Mapping[str, int],
    min_members: int,
) -> list[str]:
    warnings = []
    if sample_ratio.flagged:
        warnings.append(
            "the split is broken: members per variant do not match the shares "
            f"(chi-squared p={sample_ratio.p_value:.2g}); no difference can be trusted"
        )
    total = sum(found.members for found in members.values())
    if total == 0:
        warnings.append("no impressions yet: no member has been shown the experiment")
    if crossed:
        warnings.append(
            f"{crossed} {_members(crossed)} shown more than one variant (each counted in the "
            "first shown): assignment was not sticky, or the shares changed while it ran"
        )
    if unknown:
        names = ", ".join(f"'{name}'" for name in sorted(unknown))
        count = sum(unknown.values())
        warnings.append(
            f"{count} {_members(count)} first shown variants the experiment does not "
            f"define ({names}): left out"
        )
    small = [name for name, found in members.items() if found.members < min_members]
    if total and small:
        names = ", ".join(f"'{name}'" for name in small)
        warnings.append(
            f"fewer than {min_members} members in {names}: too few for any difference to "
            "be told from chance"
        )
    return warnings


def _members(count: int) -> str:
    return "member was" if count == 1 else "members were"
