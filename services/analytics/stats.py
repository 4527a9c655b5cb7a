"""Statistics of experiment reports: each variant's metrics against control, SRM and CUPED.

Members are the randomisation unit, so every function takes one value per member (an empty
variant is an empty array) and compares per-member quantities:

* mean metrics (revenue per member; conversion, the share of members who converted, is the
  mean of 0/1 values): a t interval per variant and Welch's t-test for the difference;
* ratio metrics (CTR = clicks / impressions, add-to-cart rate = carts / impressions, both
  summed over members): the delta-method standard error of a ratio of per-member sums, since
  the impressions of one member are not independent of each other; the difference uses
  Welch-Satterthwaite degrees of freedom, so with every denominator 1 it is Welch's t-test;
* proportions of members (a campaign group's conversion): a Wilson score interval, which
  stays within [0, 1] and does not collapse on a group where nobody (or everybody) converted;
* sample ratio mismatch: chi-squared goodness of fit of members per variant to the shares;
* CUPED: each member's metric less theta * (covariate - its mean), theta fitted on all variants
  pooled, with the share of the difference's variance that removed;
* percentiles of a distribution given as distinct values and their counts (serving latency):
  nearest rank, so that a percentile is always a value that was observed.

Results are frozen dataclasses of finite floats, so `dataclasses.asdict` serialises to JSON.
A test that cannot be run (an empty variant, a single member, no variance, no denominator)
gives a p-value of 1.0, an interval collapsed on the point estimate and a `note` saying why,
never NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

Array = npt.NDArray[np.float64]

WELCH = "Welch's t-test"
DELTA = "delta method (ratio of per-member sums), Welch-Satterthwaite df"
# The usual SRM threshold: the check runs on every report of every experiment and a flag
# stops anyone reading the experiment, so a false alarm must be rare; a broken assignment
# shows p-values far below it anyway.
SRM_ALPHA = 0.001
# A spread below this share of the values' magnitude is rounding, not variance.
_RELATIVE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Estimate:
    """A metric of one variant and its interval at the report's confidence, over `n` members."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Difference:
    """A variant against control: the absolute difference with its interval, lift and test.

    `relative` is treatment / control - 1, None when the control value is 0. `significant` is
    p_value < 1 - confidence. `note` says why no test could be run (then p_value is 1.0 and the
    interval collapsed on `absolute`). `variance_reduction` is set by CUPED: the share of the
    difference's variance the covariate removed (near 0, even slightly below, when it is useless).
    """

    control: Estimate
    treatment: Estimate
    absolute: float
    low: float
    high: float
    relative: float | None
    p_value: float
    standard_error: float
    confidence: float
    method: str
    significant: bool
    note: str | None = None
    variance_reduction: float | None = None


@dataclass(frozen=True)
class SrmCheck:
    """Members per variant against the configured shares; `expected` is members per variant."""

    chi2: float
    p_value: float
    flagged: bool
    expected: dict[str, float]
    note: str | None = None


@dataclass(frozen=True)
class _Arm:
    """A variant's point estimate and its squared standard error; `note` when undefined."""

    n: int
    value: float
    variance: float
    note: str | None = None

    def estimate(self, confidence: float) -> Estimate:
        if self.n < 2 or self.variance == 0:
            return Estimate(self.value, self.value, self.value, self.n)
        half = _critical(confidence, self.n - 1) * math.sqrt(self.variance)
        return Estimate(self.value, self.value - half, self.value + half, self.n)


def mean_estimate(values: npt.ArrayLike, confidence: float = 0.95) -> Estimate:
    """The mean of per-member values with a t interval (n - 1 degrees of freedom)."""
    _alpha(confidence)
    return _mean_arm(values, "the variant").estimate(confidence)


def proportion_estimate(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """The share of `n` members who did something, with a Wilson score interval.

    A t interval of 0/1 values collapses on 0 when nobody in a small group converted, as if
    nobody ever could; Wilson's stays within [0, 1] and keeps the width the sample size
    allows (0 of 10 at 95%: [0, 0.278]). No members: 0 with a collapsed interval.
    """
    _alpha(confidence)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    if n == 0:
        return Estimate(0.0, 0.0, 0.0, 0)
    share = successes / n
    z2 = float(stats.norm.ppf(0.5 + confidence / 2)) ** 2
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n) * math.sqrt(z2)
    # Rounding must not push the bounds past the share itself or out of [0, 1].
    return Estimate(
        share, max(min(centre - half, share), 0.0), min(max(centre + half, share), 1.0), n
    )


def ratio_estimate(
    numerators: npt.ArrayLike, denominators: npt.ArrayLike, confidence: float = 0.95
) -> Estimate:
    """sum(numerators) / sum(denominators) over members, with a delta-method t interval.

    Members with a denominator of 0 (no impressions) still count in `n`. The value is 0 with a
    collapsed interval when every denominator is 0.
    """
    _alpha(confidence)
    return _ratio_arm(numerators, denominators, "the variant").estimate(confidence)


def mean_difference(
    control: npt.ArrayLike, treatment: npt.ArrayLike, confidence: float = 0.95
) -> Difference:
    """Treatment's mean against control's by Welch's t-test (unequal variances)."""
    arms = _mean_arm(control, "control"), _mean_arm(treatment, "treatment")
    return _compare(*arms, confidence, WELCH)


def ratio_difference(
    num_c: npt.ArrayLike,
    den_c: npt.ArrayLike,
    num_t: npt.ArrayLike,
    den_t: npt.ArrayLike,
    confidence: float = 0.95,
) -> Difference:
    """Treatment's ratio of per-member sums against control's, by the delta method."""
    arms = _ratio_arm(num_c, den_c, "control"), _ratio_arm(num_t, den_t, "treatment")
    return _compare(*arms, confidence, DELTA)


def sample_ratio_mismatch(
    counts: Mapping[str, int], shares: Mapping[str, float], alpha: float = SRM_ALPHA
) -> SrmCheck:
    """Whether the members per variant stray from the configured shares more than chance allows.

    The variants are those of `shares`; a variant missing from `counts` has no members. Shares
    are normalised over the variants, as an experiment may cover only part of the traffic
    (0.1 / 0.1 is a 50 / 50 split). A member count in a variant without a share is an error.
    """
    variants = list(shares)
    unknown = sorted(set(counts) - set(variants))
    if unknown:
        raise ValueError(f"members counted in variants without a share: {unknown}")
    weights = np.array([shares[v] for v in variants], dtype=np.float64)
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError("every share must be a positive number")
    observed = np.array([counts.get(v, 0) for v in variants], dtype=np.float64)
    if np.any(observed < 0):
        raise ValueError("member counts cannot be negative")
    expected = observed.sum() * weights / weights.sum()
    expected_by_variant = {v: float(e) for v, e in zip(variants, expected, strict=True)}
    if len(variants) < 2:
        return SrmCheck(0.0, 1.0, False, expected_by_variant, "one variant: nothing to compare")
    if observed.sum() == 0:
        return SrmCheck(0.0, 1.0, False, expected_by_variant, "no members assigned yet")
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    p_value = float(stats.chi2.sf(chi2, len(variants) - 1))
    return SrmCheck(chi2, p_value, p_value < alpha, expected_by_variant)


def cuped(
    values_by_variant: Mapping[str, npt.ArrayLike],
    covariate_by_variant: Mapping[str, npt.ArrayLike],
) -> dict[str, Array]:
    """Each variant's per-member values less theta * (covariate - the covariate's mean).

    theta = cov(y, x) / var(x) and the mean of x are taken over all variants pooled, so every
    arm gets the same adjustment and the difference stays unbiased (the covariate, measured
    before the experiment, has the same expectation in every arm). With a constant covariate
    the values come back unchanged.
    """
    if set(values_by_variant) != set(covariate_by_variant):
        raise ValueError("values and covariates must cover the same variants")
    ys = {v: _as_values(values, f"values of {v}") for v, values in values_by_variant.items()}
    xs = {v: _as_values(covariate_by_variant[v], f"covariate of {v}") for v in ys}
    for variant, y in ys.items():
        if xs[variant].shape != y.shape:
            raise ValueError(f"{variant}: one covariate value per member is needed")
    theta, x_mean = _cuped_theta(ys, xs)
    return {v: y - theta * (xs[v] - x_mean) for v, y in ys.items()}


def cuped_difference(
    control_y: npt.ArrayLike,
    control_x: npt.ArrayLike,
    treatment_y: npt.ArrayLike,
    treatment_x: npt.ArrayLike,
    confidence: float = 0.95,
    covariate: str = "pre-experiment spend",
) -> Difference:
    """Welch's t-test on CUPED-adjusted means; `covariate` names x in `method`.

    `variance_reduction` is 1 - (adjusted standard error / unadjusted standard error)^2,
    about the squared correlation between metric and covariate.
    """
    adjusted = cuped(
        {"control": control_y, "treatment": treatment_y},
        {"control": control_x, "treatment": treatment_x},
    )
    method = f"{WELCH} on CUPED-adjusted values ({covariate})"
    arms = _mean_arm(adjusted["control"], "control"), _mean_arm(adjusted["treatment"], "treatment")
    result = _compare(*arms, confidence, method)
    unadjusted = mean_difference(control_y, treatment_y, confidence)
    reduction = _variance_reduction(unadjusted.standard_error, result.standard_error)
    return dataclasses.replace(result, variance_reduction=reduction)


def percentile(values: npt.ArrayLike, counts: npt.ArrayLike, q: float) -> float | None:
    """The nearest-rank `q` quantile (0 < q <= 1) of `values`, each seen `counts` times: the
    smallest value with at least a share `q` of all observations at or below it (the p99 of
    100 latencies is the 99th smallest, of 50 their largest). None without observations."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be more than 0 and at most 1, not {q}")
    x = _as_values(values, "values")
    n = np.asarray(counts, dtype=np.int64)
    if n.shape != x.shape or np.any(n < 0):
        raise ValueError("one count (0 or more) per value is needed")
    total = int(n.sum())
    if total == 0:
        return None
    order = np.argsort(x, kind="stable")
    # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, whose ceiling is 8.
    rank = math.ceil(round(q * total, 9))
    index = int(np.searchsorted(np.cumsum(n[order]), rank))
    return float(x[order][index])


def _compare(control: _Arm, treatment: _Arm, confidence: float, method: str) -> Difference:
    alpha = _alpha(confidence)
    undefined = control.note or treatment.note
    absolute = 0.0 if undefined else treatment.value - control.value
    variance = control.variance + treatment.variance
    note = undefined or _untestable(control, treatment, variance)
    low = high = absolute
    p_value, se = 1.0, 0.0
    if note is None:
        se = math.sqrt(variance)
        df = _welch_df(control, treatment)
        p_value = float(2 * stats.t.sf(abs(absolute) / se, df))
        half = _critical(confidence, df) * se
        low, high = absolute - half, absolute + half
    return Difference(
        control=control.estimate(confidence),
        treatment=treatment.estimate(confidence),
        absolute=absolute,
        low=low,
        high=high,
        relative=None if undefined else _relative(control.value, treatment.value),
        p_value=p_value,
        standard_error=se,
        confidence=confidence,
        method=method,
        significant=p_value < alpha,
        note=note,
    )


def _untestable(control: _Arm, treatment: _Arm, variance: float) -> str | None:
    for label, arm in (("control", control), ("treatment", treatment)):
        if arm.n < 2:
            return f"fewer than 2 members in {label}: no variance to test against"
    if variance == 0:
        return "no variance within either variant: no test"
    return None


def _welch_df(control: _Arm, treatment: _Arm) -> float:
    # Welch-Satterthwaite: the degrees of freedom of a sum of two unequal variance estimates.
    parts = control.variance**2 / (control.n - 1) + treatment.variance**2 / (treatment.n - 1)
    return (control.variance + treatment.variance) ** 2 / parts


def _mean_arm(values: npt.ArrayLike, label: str) -> _Arm:
    y = _as_values(values, label)
    if y.size == 0:
        return _Arm(0, 0.0, 0.0, f"no members in {label}")
    return _Arm(y.size, float(y.mean()), _variance(y, _magnitude(y)) / y.size)


def _ratio_arm(numerators: npt.ArrayLike, denominators: npt.ArrayLike, label: str) -> _Arm:
    x = _as_values(numerators, f"numerators of {label}")
    y = _as_values(denominators, f"denominators of {label}")
    if x.shape != y.shape:
        raise ValueError(f"{label}: one numerator and one denominator per member are needed")
    if x.size == 0:
        return _Arm(0, 0.0, 0.0, f"no members in {label}")
    if y.sum() == 0:
        return _Arm(x.size, 0.0, 0.0, f"every denominator is 0 in {label}: no ratio")
    ratio = float(x.sum() / y.sum())
    # Delta method: var(R) = (s_x^2 - 2 R s_xy + R^2 s_y^2) / (n mean(y)^2), and the bracket is
    # the sample variance of the residuals x - R y, which is cheaper and as exact.
    residuals = x - ratio * y
    scale = _magnitude(x) + abs(ratio) * _magnitude(y)
    variance = _variance(residuals, scale) / (x.size * float(y.mean()) ** 2)
    return _Arm(x.size, ratio, variance)


def _cuped_theta(ys: Mapping[str, Array], xs: Mapping[str, Array]) -> tuple[float, float]:
    """theta and the covariate's mean over all variants pooled; theta 0 for a constant x."""
    if not ys:
        return 0.0, 0.0
    y = np.concatenate(list(ys.values()))
    x = np.concatenate([xs[v] for v in ys])
    x_variance = _variance(x, _magnitude(x))
    if x_variance == 0:
        return 0.0, 0.0
    covariance = float(np.sum((x - x.mean()) * (y - y.mean())) / (x.size - 1))
    return covariance / x_variance, float(x.mean())


def _variance_reduction(unadjusted_se: float, adjusted_se: float) -> float:
    if unadjusted_se == 0:
        return 0.0
    return 1 - (adjusted_se / unadjusted_se) ** 2


def _relative(control: float, treatment: float) -> float | None:
    if control == 0:
        return None
    relative = treatment / control - 1
    return relative if math.isfinite(relative) else None


def _variance(values: Array, scale: float) -> float:
    """The sample variance (ddof 1); 0 for fewer than 2 values or a spread that is rounding."""
    if values.size < 2 or float(np.ptp(values)) <= _RELATIVE_TOLERANCE * scale:
        return 0.0
    return float(np.var(values, ddof=1))


def _magnitude(values: Array) -> float:
    return float(np.max(np.abs(values))) if values.size else 0.0


def _critical(confidence: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _alpha(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return 1 - confidence


def _as_values(values: npt.ArrayLike, label: str) -> Array:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{label}: one value per member (a 1-D array) is needed")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{label}: every value must be finite")
    return array
