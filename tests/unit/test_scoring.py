"""RFM quintiles and price distributions, against cases computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.profiles import scoring
from services.profiles.scoring import (
    RfmScores,
    ScoreSchedule,
    Scoring,
    percentile_of,
    quantiles,
    quintile_boundaries,
    rfm_scores,
    score_down,
    score_up,
)

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def test_boundaries_are_nearest_rank_quintiles() -> None:
    # n = 10: ranks ceil(2), ceil(4), ceil(6), ceil(8) -> the 2nd, 4th, 6th and 8th values.
    assert quintile_boundaries([10, 1, 9, 2, 8, 3, 7, 4, 6, 5]) == (2, 4, 6, 8)
    # n = 7: ranks ceil(1.4)=2, ceil(2.8)=3, ceil(4.2)=5, ceil(5.6)=6.
    assert quintile_boundaries([70, 10, 60, 20, 50, 30, 40]) == (20, 30, 50, 60)


def test_fewer_than_five_members_give_no_boundaries() -> None:
    assert quintile_boundaries([1, 2, 3, 4]) == ()
    assert quintile_boundaries([]) == ()


def test_each_fifth_of_distinct_values_gets_its_score() -> None:
    boundaries = quintile_boundaries(range(1, 11))

    assert [score_up(v, boundaries) for v in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Recency: fewer days is better, the most recent fifth scores 5.
    assert [score_down(v, boundaries) for v in range(1, 11)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    # Outside the population's range: the end scores.
    assert (score_up(0, boundaries), score_up(1000, boundaries)) == (1, 5)
    assert (score_down(0, boundaries), score_down(1000, boundaries)) == (5, 1)


def test_ties_stay_together_even_when_a_score_stays_empty() -> None:
    # Half the members ordered once: b1 = b2 = 1, so every one of them scores 1 and
    # nobody scores 2; two orders is above b2 but not above b3 = 2.
    frequencies = [1, 1, 1, 1, 1, 2, 2, 3, 5, 8]
    boundaries = quintile_boundaries(frequencies)

    assert boundaries == (1, 1, 2, 3)
    assert [score_up(f, boundaries) for f in frequencies] == [1, 1, 1, 1, 1, 3, 3, 4, 5, 5]


def test_scores_need_an_order_and_boundaries() -> None:
    computed = scoring.compute(
        computed_at=NOW,
        window_days=365,
        population=[
            (float(d), f, m)
            for d, f, m in zip(range(10), range(1, 11), range(10, 110, 10), strict=True)
        ],
        catalog_prices={},
        paid_prices={},
    )

    assert computed.population == 10
    assert computed.recency == (1, 3, 5, 7)
    assert computed.frequency == (2, 4, 6, 8)
    assert computed.monetary == (20, 40, 60, 80)
    assert rfm_scores(computed, 0.5, 9, 85.0) == RfmScores(r=5, f=5, m=5)
    assert rfm_scores(computed, 400.0, 1, 5.0) == RfmScores(r=1, f=1, m=1)
    assert rfm_scores(computed, None, 0, 0.0) is None
    empty = Scoring(computed_at=NOW, window_days=365, population=3)
    assert rfm_scores(empty, 1.0, 3, 30.0) is None
    assert rfm_scores(None, 1.0, 3, 30.0) is None


def test_quantiles_interpolate_between_values() -> None:
    assert quantiles([1, 2, 3, 4, 5], points=5) == (1, 2, 3, 4, 5)
    assert quantiles([0, 10], points=5) == (0, 2.5, 5, 7.5, 10)
    assert quantiles([7], points=3) == (7, 7, 7)
    assert len(quantiles(range(100))) == scoring.QUANTILE_POINTS


def test_percentile_within_a_distribution() -> None:
    points = (0.0, 10.0, 20.0, 30.0, 40.0)  # quartiles: 0%, 25%, 50%, 75%, 100%

    assert percentile_of(20.0, points) == 0.5
    assert percentile_of(5.0, points) == pytest.approx(0.125)
    assert percentile_of(35.0, points) == pytest.approx(0.875)
    assert (percentile_of(-1.0, points), percentile_of(99.0, points)) == (0.0, 1.0)
    # A price shared by many items sits in the middle of its run: 1.0 is the 0%..50% run.
    assert percentile_of(1.0, (1.0, 1.0, 1.0, 2.0, 3.0)) == 0.25


def test_price_distributions_prefer_the_catalog_and_need_five_prices() -> None:
    prices, sources = scoring.price_distributions(
        catalog={"kitchen": [1, 2, 3, 4, 5], "garden": [10, 20]},
        paid={"garden": [8, 9, 10, 11, 12], "toys": [1, 2], "kitchen": [100] * 9},
    )

    assert sources == {"kitchen": "catalog", "garden": "paid"}
    assert prices["kitchen"][0] == 1 and prices["kitchen"][-1] == 5
    assert prices["garden"][0] == 8 and prices["garden"][-1] == 12


def test_scoring_survives_its_json() -> None:
    computed = Scoring(
        computed_at=NOW,
        window_days=365,
        population=12,
        recency=(1, 2, 3, 4),
        frequency=(1, 1, 2, 3),
        monetary=(10, 20, 30, 40),
        prices={"kitchen": (1.0, 2.0, 3.0)},
        price_sources={"kitchen": "catalog"},
    )

    assert scoring.decode(scoring.encode(computed)) == computed


def test_schedule_recomputes_when_stale_or_when_the_population_grew() -> None:
    schedule = ScoreSchedule(interval_s=3600, stale_share=0.1)
    fresh = Scoring(computed_at=NOW, window_days=365, population=500)

    assert schedule.due(None, NOW, 0)
    assert not schedule.due(fresh, NOW + timedelta(minutes=10), 49)
    assert schedule.due(fresh, NOW + timedelta(minutes=10), 50)
    assert schedule.due(fresh, NOW + timedelta(hours=1), 0)
    # An empty store's first orders make it due at once (a fleet catching up).
    empty = Scoring(computed_at=NOW, window_days=365, population=0)
    assert not schedule.due(empty, NOW, 0)
    assert schedule.due(empty, NOW, 1)
