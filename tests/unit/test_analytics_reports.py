"""Experiment reports from synthetic per-member figures: a known lift is recovered, an A/A
test shows nothing, a broken split is the first warning, CUPED narrows the interval when
the spend before the experiment predicts the spend during it."""

from __future__ import annotations

import numpy as np
import pytest

from services.analytics.reports import (
    METRICS,
    ExperimentFigures,
    ExperimentReport,
    MemberFigures,
    report,
)

SHARES = {"control": 0.5, "treatment": 0.5}


def members(
    rng: np.random.Generator,
    n: int,
    *,
    ctr: float = 0.05,
    conversion: float = 0.10,
    basket: float = 40.0,
    pre_spend: np.ndarray | None = None,
) -> MemberFigures:
    """n members with Poisson impressions, binomial clicks and carts, purchases converting
    with `conversion`, and revenue of buyers around `basket`."""
    impressions = rng.poisson(8, n) + 1
    clicks = rng.binomial(impressions, ctr)
    carts = rng.binomial(impressions, ctr / 2)
    bought = rng.random(n) < conversion
    revenue = np.where(bought, rng.gamma(4.0, basket / 4.0, n), 0.0)
    pre = pre_spend if pre_spend is not None else rng.gamma(2.0, 50.0, n)
    refunded = np.zeros(n)
    rows = zip(impressions, clicks, carts, bought.astype(int), revenue, pre, refunded, strict=True)
    return MemberFigures.of(rows)


def run(figures: dict[str, MemberFigures], shares: dict[str, float] = SHARES) -> ExperimentReport:
    return report("exp-1", shares, "control", None, None, 0.95, ExperimentFigures(figures))


def test_a_known_lift_is_recovered_within_the_interval() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    treated = members(rng, n, ctr=0.06, conversion=0.13)
    done = run({"control": members(rng, n, ctr=0.05, conversion=0.10), "treatment": treated})

    assert done.warnings == ()
    control, treatment = done.variants
    assert (control.name, treatment.name) == ("control", "treatment")
    assert control.differences == {} and list(treatment.differences) == list(METRICS)
    ctr = treatment.differences["ctr"]
    assert ctr.low < 0.01 < ctr.high and ctr.significant
    assert ctr.relative == pytest.approx(0.2, abs=0.06)
    conversion = treatment.differences["conversion_rate"]
    assert conversion.low < 0.03 < conversion.high and conversion.significant
    revenue = treatment.differences["revenue_per_member"]
    # 40 per buyer: 0.03 more buyers per member is 1.2 more revenue per member.
    assert revenue.low < 1.2 < revenue.high and revenue.significant
    assert treatment.members == n and treatment.impressions == int(treated.impressions.sum())
    assert treatment.revenue == pytest.approx(float(treated.revenue.sum()))
    assert treatment.clicks > control.clicks and treatment.purchases > control.purchases


def test_an_a_a_test_finds_no_difference() -> None:
    rng = np.random.default_rng(11)
    done = run({"control": members(rng, 5_000), "treatment": members(rng, 5_000)})

    differences = done.variants[1].differences
    assert not [metric for metric, d in differences.items() if d.significant]
    assert all(d.low < 0 < d.high for d in differences.values())
    assert not done.sample_ratio.flagged and done.warnings == ()


def test_a_broken_split_is_the_first_warning() -> None:
    rng = np.random.default_rng(3)
    figures = {"control": members(rng, 1_000), "treatment": members(rng, 1_250)}
    crossed = ExperimentFigures(figures, crossed=12)

    done = report("exp-1", SHARES, "control", None, None, 0.95, crossed, min_members=1_100)

    assert done.sample_ratio.flagged and done.sample_ratio.p_value < 0.001
    assert done.sample_ratio.expected == {"control": 1125.0, "treatment": 1125.0}
    assert done.warnings[0].startswith(
        "the split is broken: members per variant do not match the shares (chi-squared p="
    )
    assert done.warnings[0].endswith("no difference can be trusted")
    assert "12 members were shown more than one variant" in done.warnings[1]
    assert done.warnings[2].startswith("fewer than 1100 members in 'control'")


def test_shares_are_relative_to_each_other() -> None:
    rng = np.random.default_rng(5)
    figures = {"control": members(rng, 900), "treatment": members(rng, 100)}

    done = run(figures, {"control": 0.09, "treatment": 0.01})

    assert not done.sample_ratio.flagged


def test_cuped_narrows_the_interval_when_pre_spend_predicts_spend() -> None:
    rng = np.random.default_rng(13)
    n = 4_000

    def with_history(lift: float) -> MemberFigures:
        pre = rng.gamma(2.0, 50.0, n)
        revenue = np.maximum(0.8 * pre + rng.normal(lift, 20.0, n), 0.0)
        columns = (np.full(n, 5), np.ones(n), np.zeros(n), revenue > 0, revenue, pre, np.zeros(n))
        rows = zip(*columns, strict=True)
        return MemberFigures.of(rows)

    done = run({"control": with_history(0.0), "treatment": with_history(3.0)})

    raw = done.variants[1].differences["revenue_per_member"]
    adjusted = done.variants[1].differences["revenue_per_member_cuped"]
    assert adjusted.high - adjusted.low < (raw.high - raw.low) / 2
    assert adjusted.variance_reduction is not None and adjusted.variance_reduction > 0.7
    assert adjusted.low < 3.0 < adjusted.high and adjusted.significant
    assert "CUPED" in adjusted.method and raw.variance_reduction is None


def test_no_impressions_yet_says_so_without_failing() -> None:
    done = run({})

    assert [v.members for v in done.variants] == [0, 0]
    assert done.warnings == ("no impressions yet: no member has been shown the experiment",)
    ctr = done.variants[1].differences["ctr"]
    assert ctr.p_value == 1.0 and not ctr.significant and ctr.note


def test_members_of_undefined_variants_are_left_out_and_named() -> None:
    rng = np.random.default_rng(17)
    figures = {
        "control": members(rng, 300),
        "treatment": members(rng, 300),
        "default": members(rng, 7),
    }

    done = run(figures)

    assert [v.name for v in done.variants] == ["control", "treatment"]
    assert done.unknown == {"default": 7}
    assert done.warnings == (
        "7 members were first shown variants the experiment does not define ('default'): left out",
    )
    assert sum(done.sample_ratio.expected.values()) == 600


def test_a_control_that_is_no_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="control"):
        report("exp-1", SHARES, "nope", None, None, 0.95, ExperimentFigures({}))
