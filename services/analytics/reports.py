"""The report of an experiment: per variant figures, the differences to the control, the split.

The store hands over one row of figures per member of the experiment (members with an
impression of it within the report's window), grouped by the variant each member was shown
first; everything here is computed from those arrays with services/analytics/stats.py, so a
report over many members costs a few array operations, never a pass over events.

Members are the unit: CTR and add-to-cart rate are ratios of per-member sums (delta
method), conversion rate (the share of members with an attributed purchase) and revenue
per member are means (Welch's t-test), and revenue per member is also compared after CUPED
with each member's spend before the experiment as the covariate.

Guardrails are figures a variant must not make worse while it improves the primary metric.
The rates (CTR, add-to-cart rate, conversion rate, refund rate: refunded attributed revenue
over attributed revenue, a ratio of per-member sums) are breached when the variant is
significantly worse than the control at the report's confidence; the serving latency's p99
(nearest rank over the variant's impressions that carry one) when it exceeds the control's
by more than a tolerance, since a latency budget is a threshold, not a test.
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
    percentile,
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
LATENCY_GUARDRAIL = "latency_p99_ms"
REFUND_RATE = "refund_rate"
# The guardrails an experiment may name (services/ranking/experiments.py has the same list).
GUARDRAILS = (LATENCY_GUARDRAIL, REFUND_RATE, "ctr", "add_to_cart_rate", "conversion_rate")
# Guardrails that get worse as they fall; the others get worse as they rise.
WORSE_WHEN_LOWER = frozenset({"ctr", "add_to_cart_rate", "conversion_rate"})
# A variant's p99 latency may exceed the control's by this share before its guardrail is
# breached (AnalyticsSettings.latency_guardrail_tolerance).
DEFAULT_LATENCY_TOLERANCE = 0.2


@dataclass(frozen=True)
class MemberFigures:
    """The members of one variant: each array holds one value per member, in the same order.

    `revenue` is attributed revenue less what refunds reversed (`refunded`); `pre_spend` what
    the member spent (all purchases, less refunds) before the experiment, CUPED's covariate.
    """

    impressions: Array
    clicks: Array
    carts: Array
    purchases: Array
    revenue: Array
    pre_spend: Array
    refunded: Array

    @classmethod
    def of(cls, rows: Iterable[Sequence[float]]) -> MemberFigures:
        """From (impressions, clicks, carts, purchases, revenue, pre_spend, refunded) per
        member."""
        table = np.asarray(list(rows), dtype=np.float64).reshape(-1, 7)
        return cls(*(np.ascontiguousarray(table[:, column]) for column in range(7)))

    @property
    def members(self) -> int:
        return int(self.impressions.size)

    @property
    def converted(self) -> Array:
        """1 for a member with an attributed purchase, else 0."""
        return (self.purchases > 0).astype(np.float64)

    @property
    def gross_revenue(self) -> Array:
        """Attributed revenue before refunds: the refund rate's denominator."""
        return self.revenue + self.refunded


@dataclass(frozen=True)
class Latencies:
    """The serving latencies (ms) of one variant's impressions: each distinct value and how
    many impressions had it."""

    values: Array
    counts: Array

    @classmethod
    def of(cls, rows: Iterable[tuple[float, int]]) -> Latencies:
        """From (latency, impressions) pairs."""
        table = np.asarray(list(rows), dtype=np.float64).reshape(-1, 2)
        return cls(np.ascontiguousarray(table[:, 0]), table[:, 1].astype(np.int64))

    @property
    def impressions(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float | None:
        return percentile(self.values, self.counts, q)


@dataclass(frozen=True)
class ExperimentFigures:
    """What the store read for a report: per variant (the first one each member was shown)
    its members' figures, how many members were shown more than one variant, and the
    window read (`started_at` resolved to the first impression when none was asked)."""

    variants: dict[str, MemberFigures]
    crossed: int = 0
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    # Per variant, its impressions' serving latencies (by the impression's own variant).
    latencies: dict[str, Latencies] = field(default_factory=dict)


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
    refunded: float
    refund_rate: Estimate
    # Impressions with a serving latency, and its nearest-rank p50 and p99 (None: none).
    latency_impressions: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    differences: dict[str, Difference] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail of one non-control variant against the control.

    `control` and `treatment` are the figures compared (None when there is none); `relative`
    treatment / control - 1; `difference` the test of a rate (None for latency); `worse`
    "lower" or "higher"; `rule` the breach rule in words; `note` why it could not be judged.
    """

    metric: str
    variant: str
    control: float | None
    treatment: float | None
    relative: float | None
    difference: Difference | None
    breached: bool
    worse: str
    rule: str
    note: str | None = None
    # Latency only: how much higher than the control's the p99 may be, as a share.
    tolerance: float | None = None


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
    # The guardrails asked, each for every non-control variant, in the order asked.
    guardrails: tuple[GuardrailCheck, ...] = ()


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
    guardrails: Sequence[str] = (),
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
) -> ExperimentReport:
    """The report of an experiment with `shares` (variant -> share, in the order to show)
    whose `control` the other variants are compared with, at `confidence`, judging the
    `guardrails` asked (GUARDRAILS) for every other variant.

    `started_at` and `stopped_at` are the window asked (the figures' own window wins when
    the store resolved one). ValueError for a control that is not a variant, shares that
    are not positive, a confidence outside (0, 1) or an unknown guardrail.
    """
    if control not in shares:
        raise ValueError(f"control: no variant '{control}'; variants: {list(shares)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    unknown_guardrails = [g for g in guardrails if g not in GUARDRAILS]
    if unknown_guardrails:
        raise ValueError(f"unknown guardrails {unknown_guardrails}; known: {list(GUARDRAILS)}")
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
    no_latency = Latencies.of([])
    variants = tuple(
        _variant(
            name,
            shares[name],
            found,
            None if name == control else baseline,
            confidence,
            figures.latencies.get(name, no_latency),
        )
        for name, found in members.items()
    )
    checks = _guardrails(
        dict.fromkeys(guardrails), variants, control, members, confidence, latency_tolerance
    )
    warnings = _warnings(sample_ratio, members, figures.crossed, unknown, min_members)
    # After a broken split (which says no difference can be trusted), before the rest.
    at = 1 if sample_ratio.flagged else 0
    warnings[at:at] = [_breach(check, control) for check in checks if check.breached]
    return ExperimentReport(
        experiment_id=experiment_id,
        control=control,
        confidence=confidence,
        variants=variants,
        sample_ratio=sample_ratio,
        warnings=tuple(warnings),
        started_at=figures.started_at or started_at,
        stopped_at=figures.stopped_at or stopped_at,
        crossed=figures.crossed,
        unknown=unknown,
        guardrails=checks,
    )


def _variant(
    name: str,
    share: float,
    found: MemberFigures,
    control: MemberFigures | None,
    confidence: float,
    latencies: Latencies,
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
        refunded=float(found.refunded.sum()),
        refund_rate=ratio_estimate(found.refunded, found.gross_revenue, confidence),
        latency_impressions=latencies.impressions,
        latency_p50_ms=latencies.percentile(0.5),
        latency_p99_ms=latencies.percentile(0.99),
        differences=differences,
    )


def _guardrails(
    asked: Iterable[str],
    variants: Sequence[VariantReport],
    control: str,
    members: Mapping[str, MemberFigures],
    confidence: float,
    tolerance: float,
) -> tuple[GuardrailCheck, ...]:
    baseline = next(v for v in variants if v.name == control)
    return tuple(
        _guardrail(metric, variant, baseline, members, confidence, tolerance)
        for metric in asked
        for variant in variants
        if variant.name != control
    )


def _guardrail(
    metric: str,
    variant: VariantReport,
    control: VariantReport,
    members: Mapping[str, MemberFigures],
    confidence: float,
    tolerance: float,
) -> GuardrailCheck:
    if metric == LATENCY_GUARDRAIL:
        return _latency_guardrail(variant, control, tolerance)
    if metric != REFUND_RATE:
        return _rate_guardrail(metric, variant.name, variant.differences[metric])
    # Not among `differences`, whose metrics are fixed: only its guardrail compares it.
    base, found = members[control.name], members[variant.name]
    difference = ratio_difference(
        base.refunded, base.gross_revenue, found.refunded, found.gross_revenue, confidence
    )
    return _rate_guardrail(metric, variant.name, difference)


def _rate_guardrail(metric: str, variant: str, difference: Difference) -> GuardrailCheck:
    """Breached when the interval lies wholly on the worse side: a two-sided test at the
    report's confidence that came out significant, in the harmful direction."""
    lower = metric in WORSE_WHEN_LOWER
    worse = difference.absolute < 0 if lower else difference.absolute > 0
    direction = "lower" if lower else "higher"
    level = f"{difference.confidence * 100:g}%"
    return GuardrailCheck(
        metric=metric,
        variant=variant,
        control=difference.control.value,
        treatment=difference.treatment.value,
        relative=difference.relative,
        difference=difference,
        breached=difference.significant and worse,
        worse=direction,
        rule=f"breached when significantly {direction} than the control's at {level}",
        note=difference.note,
    )


def _latency_guardrail(
    variant: VariantReport, control: VariantReport, tolerance: float
) -> GuardrailCheck:
    """Breached when the variant's p99 exceeds the control's by more than `tolerance`."""
    ours, theirs = variant.latency_p99_ms, control.latency_p99_ms
    note, breached, relative = None, False, None
    if ours is None or theirs is None:
        missing = [v.name for v in (control, variant) if v.latency_p99_ms is None]
        names = " and ".join(f"'{name}'" for name in missing)
        note = f"no serving latency recorded in {names}: nothing to compare"
    else:
        breached = ours > theirs * (1 + tolerance)
        relative = ours / theirs - 1 if theirs > 0 else None
    return GuardrailCheck(
        metric=LATENCY_GUARDRAIL,
        variant=variant.name,
        control=theirs,
        treatment=ours,
        relative=relative,
        difference=None,
        breached=breached,
        worse="higher",
        rule=f"breached when the p99 exceeds the control's by more than {tolerance * 100:g}%",
        note=note,
        tolerance=tolerance,
    )


def _breach(check: GuardrailCheck, control: str) -> str:
    """The warning of a breached guardrail, with the figures that breached it."""
    head = f"guardrail {check.metric} breached by {check.variant}"
    d = check.difference
    if d is None:
        lift = f"{check.relative:+.0%}, " if check.relative is not None else ""
        return (
            f"{head}: p99 {check.treatment:.1f} ms against {check.control:.1f} ms in "
            f"{control} ({lift}more than the {(check.tolerance or 0) * 100:g}% allowed)"
        )
    return (
        f"{head}: {d.treatment.value:.4g} against {d.control.value:.4g} in {control}, "
        f"{d.absolute:+.4g} [{d.low:+.4g}, {d.high:+.4g}] at {d.confidence * 100:g}%, "
        f"p={d.p_value:.2g} ({check.worse} is worse)"
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
