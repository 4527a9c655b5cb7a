"""Experiment report statistics against scipy, hand-computed cases and seeded simulations.

Simulated shops: impressions per member are Poisson with a member-specific rate, clicks are
Bernoulli per impression with a member-specific click probability, revenue is lognormal for
the few members who buy and 0 for the rest. Every simulation is seeded, so the rates asserted
below are the same on every run; their bounds leave room for other seeds too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from services.analytics.stats import (
    Difference,
    cuped,
    cuped_difference,
    mean_difference,
    mean_estimate,
    ratio_difference,
    ratio_estimate,
    sample_ratio_mismatch,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

BUY_RATE = 0.08
# Lognormal(3.5, 1) order values: a mean of exp(3.5 + 1/2) = exp(4) per buyer.
MEAN_REVENUE = BUY_RATE * math.exp(4.0)
MEAN_CTR = 0.05  # the mean of Beta(2, 38)


def shop(
    rng: np.random.Generator,
    shape: tuple[int, int],
    ctr_lift: float = 1.0,
    revenue_lift: float = 1.0,
) -> tuple[IntArray, IntArray, FloatArray]:
    """Clicks, impressions and revenue per member, one simulated experiment arm per row."""
    impressions = rng.poisson(rng.gamma(2.0, 5.0, shape))
    clicks = rng.binomial(impressions, rng.beta(2.0, 38.0, shape) * ctr_lift)
    buyers = rng.random(shape) < BUY_RATE
    revenue = np.where(buyers, rng.lognormal(3.5, 1.0, shape), 0.0) * revenue_lift
    return clicks, impressions, revenue


def finite_numbers(value: Any) -> list[float]:
    """Every number in a result, nested dataclasses and dicts included."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return finite_numbers(dataclasses.asdict(value))
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


# Mean metrics: Welch's t-test.


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_mean_difference_is_scipys_welch(confidence: float) -> None:
    rng = np.random.default_rng(1)
    control = rng.lognormal(3.0, 1.0, 60)
    treatment = rng.lognormal(3.3, 1.4, 90)
    result = mean_difference(control, treatment, confidence)
    welch = stats.ttest_ind(treatment, control, equal_var=False)
    interval = welch.confidence_interval(confidence)
    assert result.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert result.absolute == pytest.approx(treatment.mean() - control.mean())
    assert result.relative == pytest.approx(treatment.mean() / control.mean() - 1)
    assert result.significant == (welch.pvalue < 1 - confidence)
    assert result.method == "Welch's t-test"
    assert result.note is None


def test_variant_estimate_is_a_t_interval() -> None:
    values = np.random.default_rng(2).normal(10.0, 3.0, 40)
    estimate = mean_estimate(values, 0.9)
    low, high = stats.t.interval(0.9, 39, loc=values.mean(), scale=stats.sem(values))
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx(
        (values.mean(), low, high)
    )
    assert estimate.n == 40


def test_a_variant_where_nobody_converted_is_still_tested() -> None:
    # Conversion as 0/1 per member: control's variance is 0, treatment's is not.
    control = np.zeros(200)
    treatment = np.r_[np.ones(12), np.zeros(188)]
    result = mean_difference(control, treatment)
    assert result.p_value == pytest.approx(
        stats.ttest_ind(treatment, control, equal_var=False).pvalue
    )
    assert result.significant
    assert result.relative is None  # no lift relative to a rate of 0
    assert result.note is None


# Ratio metrics: the delta method.


def test_delta_method_by_hand() -> None:
    # Control: clicks x = 1 0 2 1 over impressions y = 2 2 4 4, so R = 4/12 = 1/3, mean y = 3,
    # s_x^2 = 2/3, s_y^2 = 4/3, s_xy = 2/3 and var(R) = (s_x^2 - 2R s_xy + R^2 s_y^2) / (n ybar^2)
    # = (2/3 - 4/9 + 4/27) / 36 = 5/486.
    # Treatment: x = 2 1 3 2 over y = 4 2 4 6, so R = 1/2, mean y = 4, s_x^2 = 2/3, s_y^2 = 8/3,
    # s_xy = 2/3 and var(R) = (2/3 - 2/3 + 2/3) / 64 = 1/96.
    result = ratio_difference([1, 0, 2, 1], [2, 2, 4, 4], [2, 1, 3, 2], [4, 2, 4, 6])
    var_c, var_t = 5 / 486, 1 / 96
    se = math.sqrt(var_c + var_t)
    df = (var_c + var_t) ** 2 / (var_c**2 / 3 + var_t**2 / 3)  # Welch-Satterthwaite, n - 1 = 3
    half = stats.t.ppf(0.975, df) * se
    assert result.control.value == pytest.approx(1 / 3)
    assert result.treatment.value == pytest.approx(1 / 2)
    assert result.control.high - result.control.low == pytest.approx(
        2 * stats.t.ppf(0.975, 3) * math.sqrt(var_c)
    )
    assert result.absolute == pytest.approx(1 / 6)
    assert result.relative == pytest.approx(0.5)
    assert result.standard_error == pytest.approx(se)
    assert (result.low, result.high) == pytest.approx((1 / 6 - half, 1 / 6 + half))
    assert result.p_value == pytest.approx(2 * stats.t.sf((1 / 6) / se, df))
    assert "delta method" in result.method


def test_a_ratio_over_unit_denominators_is_welch() -> None:
    rng = np.random.default_rng(3)
    control, treatment = rng.exponential(2.0, 50), rng.exponential(2.5, 70)
    ratio = ratio_difference(control, np.ones(50), treatment, np.ones(70))
    mean = mean_difference(control, treatment)
    assert (ratio.p_value, ratio.low, ratio.high) == pytest.approx(
        (mean.p_value, mean.low, mean.high)
    )


def test_ratio_estimate_sums_over_members() -> None:
    # 3 clicks over 10 impressions, the member without impressions counting towards n.
    estimate = ratio_estimate([1, 2, 0], [4, 6, 0])
    assert estimate.value == pytest.approx(0.3)
    assert estimate.n == 3
    assert estimate.low < 0.3 < estimate.high


def test_delta_method_standard_error_matches_simulated_experiments() -> None:
    rng = np.random.default_rng(4)
    shape = (2000, 500)

    def arm() -> tuple[IntArray, IntArray]:
        # Members differ a lot in how often they see items and how likely they click, which
        # is when counting impressions as independent goes wrong.
        impressions = rng.poisson(rng.gamma(0.5, 20.0, shape))
        return rng.binomial(impressions, rng.beta(0.5, 9.5, shape)), impressions

    (clicks_c, impressions_c), (clicks_t, impressions_t) = arm(), arm()
    ctr_c = clicks_c.sum(axis=1) / impressions_c.sum(axis=1)
    ctr_t = clicks_t.sum(axis=1) / impressions_t.sum(axis=1)
    empirical = np.std(ctr_t - ctr_c, ddof=1)
    reported = np.mean(
        [
            ratio_difference(
                clicks_c[i], impressions_c[i], clicks_t[i], impressions_t[i]
            ).standard_error
            for i in range(shape[0])
        ]
    )
    assert reported == pytest.approx(empirical, rel=0.10)
    # The binomial standard error over impressions would claim about half the real spread.
    naive = np.mean(
        np.sqrt(
            ctr_c * (1 - ctr_c) / impressions_c.sum(axis=1)
            + ctr_t * (1 - ctr_t) / impressions_t.sum(axis=1)
        )
    )
    assert naive < 0.8 * empirical


# Error rates over simulated experiments.


def test_aa_experiments_are_rarely_significant() -> None:
    rng = np.random.default_rng(5)
    shape = (400, 2000)
    clicks_c, impressions_c, revenue_c = shop(rng, shape)
    clicks_t, impressions_t, revenue_t = shop(rng, shape)
    revenue = [mean_difference(revenue_c[i], revenue_t[i]).significant for i in range(shape[0])]
    conversion = [
        mean_difference(revenue_c[i] > 0, revenue_t[i] > 0).significant for i in range(shape[0])
    ]
    ctr = [
        ratio_difference(clicks_c[i], impressions_c[i], clicks_t[i], impressions_t[i]).significant
        for i in range(shape[0])
    ]
    for name, flags in {"revenue": revenue, "conversion": conversion, "ctr": ctr}.items():
        assert 0.02 <= np.mean(flags) <= 0.09, name


def test_a_known_lift_is_covered_and_estimated_without_bias() -> None:
    rng = np.random.default_rng(6)
    shape = (300, 2000)
    clicks_c, impressions_c, revenue_c = shop(rng, shape)
    clicks_t, impressions_t, revenue_t = shop(rng, shape, ctr_lift=1.1, revenue_lift=1.1)
    revenue = [mean_difference(revenue_c[i], revenue_t[i]) for i in range(shape[0])]
    ctr = [
        ratio_difference(clicks_c[i], impressions_c[i], clicks_t[i], impressions_t[i])
        for i in range(shape[0])
    ]
    # E[clicks] / E[impressions] is the mean click probability, member rates being independent.
    for results, true_lift in ((revenue, 0.1 * MEAN_REVENUE), (ctr, 0.1 * MEAN_CTR)):
        covered = np.mean([r.low <= true_lift <= r.high for r in results])
        estimates = np.array([r.absolute for r in results])
        assert 0.90 <= covered <= 0.99
        assert abs(estimates.mean() - true_lift) < 3 * estimates.std() / math.sqrt(len(estimates))


# Sample ratio mismatch.


def test_an_even_split_is_not_flagged() -> None:
    check = sample_ratio_mismatch(
        {"control": 5000, "treatment": 5000}, {"control": 0.5, "treatment": 0.5}
    )
    assert not check.flagged
    assert check.chi2 == 0.0
    assert check.p_value == pytest.approx(1.0)
    assert check.expected == {"control": 5000.0, "treatment": 5000.0}


def test_a_skewed_split_is_flagged() -> None:
    check = sample_ratio_mismatch(
        {"control": 5000, "treatment": 5400}, {"control": 0.5, "treatment": 0.5}
    )
    # Expected 5200 each: chi2 = 2 * 200^2 / 5200, p about 9e-5 at one degree of freedom.
    assert check.chi2 == pytest.approx(2 * 200**2 / 5200)
    assert check.p_value == pytest.approx(stats.chi2.sf(2 * 200**2 / 5200, 1))
    assert check.flagged


def test_shares_of_partial_traffic_are_normalised() -> None:
    counts = {"control": 5000, "treatment": 5400}
    partial = sample_ratio_mismatch(counts, {"control": 0.1, "treatment": 0.1})
    assert partial == sample_ratio_mismatch(counts, {"control": 0.5, "treatment": 0.5})


def test_uneven_shares_match_scipys_goodness_of_fit() -> None:
    counts = {"control": 1950, "a": 4100, "b": 4010}
    shares = {"control": 0.2, "a": 0.4, "b": 0.4}
    check = sample_ratio_mismatch(counts, shares)
    expected = [2012.0, 4024.0, 4024.0]
    scipy_check = stats.chisquare([1950, 4100, 4010], expected)
    assert check.expected == pytest.approx(dict(zip(shares, expected, strict=True)))
    assert (check.chi2, check.p_value) == pytest.approx((scipy_check.statistic, scipy_check.pvalue))
    assert not check.flagged


@pytest.mark.parametrize(
    "counts", [{"control": 5000, "treatment": 0}, {"control": 5000}], ids=["zero", "missing"]
)
def test_a_variant_without_members_is_flagged(counts: dict[str, int]) -> None:
    check = sample_ratio_mismatch(counts, {"control": 0.5, "treatment": 0.5})
    assert check.flagged
    assert all(math.isfinite(x) for x in finite_numbers(check))


def test_no_members_yet_is_not_a_mismatch() -> None:
    check = sample_ratio_mismatch({}, {"control": 0.5, "treatment": 0.5})
    assert not check.flagged
    assert check.p_value == 1.0
    assert check.note


def test_members_in_an_unconfigured_variant_are_an_error() -> None:
    with pytest.raises(ValueError, match="without a share"):
        sample_ratio_mismatch({"control": 10, "ghost": 3}, {"control": 1.0})


# CUPED.


def spend(
    rng: np.random.Generator, shape: tuple[int, ...], correlation: float, lift: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Spend during the experiment and before it, correlated `correlation`."""
    before = rng.standard_normal(shape)
    during = correlation * before + math.sqrt(1 - correlation**2) * rng.standard_normal(shape)
    return 50 + 20 * during + lift, 50 + 20 * before


def test_a_correlated_covariate_narrows_the_interval() -> None:
    rng = np.random.default_rng(7)
    y_c, x_c = spend(rng, (5000,), 0.7)
    y_t, x_t = spend(rng, (5000,), 0.7, lift=1.0)
    adjusted = cuped_difference(y_c, x_c, y_t, x_t)
    unadjusted = mean_difference(y_c, y_t)
    assert adjusted.variance_reduction == pytest.approx(0.49, abs=0.03)
    width = (adjusted.high - adjusted.low) / (unadjusted.high - unadjusted.low)
    assert width == pytest.approx(math.sqrt(1 - 0.49), abs=0.03)
    assert adjusted.method == "Welch's t-test on CUPED-adjusted values (pre-experiment spend)"


def test_cuped_keeps_the_expected_difference() -> None:
    rng = np.random.default_rng(8)
    y_c, x_c = spend(rng, (300, 1000), 0.7)
    y_t, x_t = spend(rng, (300, 1000), 0.7, lift=2.0)
    results = [cuped_difference(y_c[i], x_c[i], y_t[i], x_t[i]) for i in range(300)]
    adjusted = np.array([r.absolute for r in results])
    # Each estimate is off by about 20 * sqrt(0.51 * 2 / 1000) = 0.64; their mean by 0.04.
    assert adjusted.mean() == pytest.approx(2.0, abs=0.15)
    assert np.mean([r.low <= 2.0 <= r.high for r in results]) == pytest.approx(0.95, abs=0.04)


def test_a_useless_covariate_changes_little() -> None:
    rng = np.random.default_rng(9)
    y_c, x_c = spend(rng, (5000,), 0.0)
    y_t, x_t = spend(rng, (5000,), 0.0, lift=1.0)
    adjusted = cuped_difference(y_c, x_c, y_t, x_t)
    unadjusted = mean_difference(y_c, y_t)
    assert adjusted.variance_reduction is not None
    assert abs(adjusted.variance_reduction) < 0.01
    assert adjusted.absolute == pytest.approx(
        unadjusted.absolute, abs=0.05 * unadjusted.standard_error
    )


def test_cuped_aa_experiments_are_rarely_significant() -> None:
    rng = np.random.default_rng(10)
    y_c, x_c = spend(rng, (400, 2000), 0.7)
    y_t, x_t = spend(rng, (400, 2000), 0.7)
    flags = [cuped_difference(y_c[i], x_c[i], y_t[i], x_t[i]).significant for i in range(400)]
    assert 0.02 <= np.mean(flags) <= 0.09


def test_every_variant_gets_the_same_pooled_adjustment() -> None:
    rng = np.random.default_rng(11)
    ys = {v: rng.normal(10.0, 2.0, n) for v, n in (("control", 30), ("a", 40), ("b", 50))}
    xs = {v: ys[v] * 0.5 + rng.normal(0.0, 1.0, y.size) for v, y in ys.items()}
    pooled_y, pooled_x = np.concatenate(list(ys.values())), np.concatenate(list(xs.values()))
    theta = np.cov(pooled_y, pooled_x)[0, 1] / np.var(pooled_x, ddof=1)
    adjusted = cuped(ys, xs)
    for variant, y in ys.items():
        assert adjusted[variant] == pytest.approx(y - theta * (xs[variant] - pooled_x.mean()))


def test_a_constant_covariate_leaves_values_unchanged() -> None:
    values = {"control": np.array([1.0, 5.0, 2.0]), "treatment": np.array([3.0, 4.0])}
    adjusted = cuped(values, {"control": [7.0, 7.0, 7.0], "treatment": [7.0, 7.0]})
    for variant, y in values.items():
        assert adjusted[variant] == pytest.approx(y)


# Degenerate inputs.


DEGENERATE: dict[str, Any] = {
    "empty control": lambda: mean_difference([], [1.0, 2.0, 3.0]),
    "empty treatment": lambda: mean_difference([1.0, 2.0, 3.0], []),
    "both empty": lambda: mean_difference([], []),
    "one member": lambda: mean_difference([5.0], [6.0, 7.0]),
    "no variance, same value": lambda: mean_difference([2.0] * 5, [2.0] * 5),
    "no variance, other value": lambda: mean_difference([0.0] * 5, [1.0] * 5),
    "all zero": lambda: mean_difference([0.0] * 5, [0.0] * 5),
    "no impressions in control": lambda: ratio_difference([0, 0], [0, 0], [1, 2], [3, 4]),
    "no impressions anywhere": lambda: ratio_difference([0, 0], [0, 0], [0, 0], [0, 0]),
    "empty ratio arm": lambda: ratio_difference([], [], [1, 2], [3, 4]),
    "constant ratio": lambda: ratio_difference([1, 2], [10, 20], [1, 2], [10, 20]),
    "cuped on empty control": lambda: cuped_difference([], [], [1.0, 2.0], [3.0, 1.0]),
    "cuped on constants": lambda: cuped_difference([1.0] * 3, [2.0] * 3, [1.0] * 3, [2.0] * 3),
}


@pytest.mark.parametrize("case", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_degenerate_inputs_give_finite_numbers_and_a_note(case: Any) -> None:
    result: Difference = case()
    assert all(math.isfinite(x) for x in finite_numbers(result))
    json.dumps(dataclasses.asdict(result), allow_nan=False)
    assert result.note
    assert result.p_value == 1.0
    assert not result.significant
    assert result.low == result.high == result.absolute


@pytest.mark.parametrize(
    "call",
    [
        lambda: mean_difference([1.0, 2.0], [3.0, 4.0], confidence=1.0),
        lambda: mean_difference([1.0, math.nan], [3.0, 4.0]),
        lambda: ratio_difference([1, 2], [3], [1], [1]),
        lambda: sample_ratio_mismatch({"control": 1}, {"control": 0.0, "treatment": 1.0}),
        lambda: cuped({"control": [1.0, 2.0]}, {"control": [1.0]}),
    ],
    ids=["confidence", "nan", "ratio lengths", "zero share", "cuped lengths"],
)
def test_malformed_input_is_an_error(call: Any) -> None:
    with pytest.raises(ValueError):
        call()
