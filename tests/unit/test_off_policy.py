"""Off-policy evaluation: the estimators on synthetic logs whose true policy value is known, the
policies' distributions, the Open Bandit reader, and the command on the Open Bandit sample.

The synthetic shop: members of a few types (each type's share known), a small catalog, three
positions drawn uniformly; a logging policy with known per-position probabilities of every
item; clicks Bernoulli from a known click table q[type, item, position], additive in the logit
(member type, item, position, log1p of the member's affinity to the item), which is the form
the reward model fits. A policy pi's true value is then exact:
sum_u P(u) * mean_k sum_a pi(a | u, k) q(u, a, k). Every simulation is seeded, so the rates
asserted below are the same on every run; their bounds leave room for other seeds too.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from services import cli as recofleet_cli
from services.evaluation.data import DataError
from services.evaluation.off_policy import (
    BanditLog,
    BlendScorer,
    ClickModel,
    Feedback,
    PopularityScorer,
    cross_fit,
    doubly_robust,
    effective_sample_size,
    fold_assignment,
    greedy_distribution,
    importance_weights,
    ips,
    judge,
    plackett_luce_distribution,
    read_open_bandit,
    snips,
    uniform_distribution,
)
from services.ranking.settings import BlendWeights

Array = npt.NDArray[np.float64]
OPEN_BANDIT_RANDOM_ALL = Path("/work/shared/data/open_bandit/random/all")
POLICIES = {
    "uniform",
    "popularity",
    "popularity-soft",
    "affinity",
    "affinity-soft",
    "blend",
    "blend-soft",
}


def softmax(logits: Array, axis: int) -> Array:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return np.asarray(e / e.sum(axis=axis, keepdims=True))


@dataclass(frozen=True)
class Shop:
    """The synthetic world: type shares, the logging and target policies, the click table."""

    shares: Array  # (types,)
    logging: Array  # (types, items, positions)
    target: Array  # (types, items, positions)
    clicks: Array  # (types, items, positions): click probabilities
    affinity: Array  # (types, items)

    @property
    def n_items(self) -> int:
        return self.clicks.shape[1]

    def value(self, policy: Array) -> float:
        """The exact click rate per impression of `policy` (types, items, positions)."""
        per_type = (policy * self.clicks).sum(axis=1).mean(axis=1)
        return float(self.shares @ per_type)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[Feedback, Array, Array]:
        """`n` logged rounds, each round's member type and the target's distribution for it."""
        types = rng.choice(len(self.shares), size=n, p=self.shares)
        positions = rng.integers(0, self.clicks.shape[2], size=n)
        probabilities = self.logging[types, :, positions]
        cumulative = probabilities.cumsum(axis=1)
        uniform = rng.random(n)[:, None] * cumulative[:, -1:]
        actions = np.minimum((uniform > cumulative).sum(axis=1), self.n_items - 1)
        rows = np.arange(n)
        clicks = (rng.random(n) < self.clicks[types, actions, positions]).astype(np.float64)
        feedback = Feedback(actions, positions, clicks, probabilities[rows, actions])
        return feedback, self.target[types], types


def make_shop(seed: int = 3, items_differ: float = 0.5, n_items: int = 8) -> Shop:
    """`items_differ`: the spread of the items' click logits. DR can only remove the variance
    that comes from the click probability varying, never a click's own Bernoulli noise, so it
    shows its worth where clicks depend strongly on the item."""
    rng = np.random.default_rng(seed)
    n_types, n_positions = 6, 3
    shares = rng.dirichlet(np.full(n_types, 3.0))
    affinity = rng.poisson(0.7, size=(n_types, n_items)).astype(np.float64)
    logit = (
        -2.2 * min(1.0, 0.5 / items_differ)
        + rng.normal(0, 0.5, size=(n_types, 1, 1))
        + rng.normal(0, items_differ, size=(1, n_items, 1))
        - 0.3 * np.arange(n_positions)[None, None, :]
        + 0.8 * np.log1p(affinity)[:, :, None]
    )
    clicks = 1 / (1 + np.exp(-logit))
    # Logging spreads over the catalog (each item at least a few percent); the target leans on
    # the affinity, so it differs from the logging policy where it matters.
    logging = softmax(rng.normal(0, 0.4, size=(n_types, n_items, n_positions)), axis=1)
    target = softmax(
        2.0 * affinity[:, :, None] + rng.normal(0, 0.3, size=(n_types, n_items, n_positions)),
        axis=1,
    )
    return Shop(shares, logging, target, clicks, affinity)


def as_log(shop: Shop, feedback: Feedback, types: npt.NDArray[np.int64]) -> BanditLog:
    """The synthetic rounds as the reader would give them: the member type as a hashed user
    feature, each item its own category, the type's affinity row."""
    n_items = shop.n_items
    return BanditLog(
        name="synthetic",
        source="memory",
        item_ids=np.arange(n_items),
        actions=feedback.actions,
        positions=feedback.positions,
        clicks=feedback.clicks,
        propensities=feedback.propensities,
        user_features=np.stack([types, types % 2], axis=1),
        affinity=shop.affinity[types].astype(np.float32),
        item_numeric=np.linspace(-1, 1, n_items)[:, None],
        item_categorical=np.arange(n_items)[:, None],
        categories=tuple(f"c{i % 3}" for i in range(n_items)),
        n_positions=shop.clicks.shape[2],
    )


# --------------------------------------------------------------------------- estimators


def test_ips_and_snips_are_unbiased_and_their_intervals_cover_the_truth() -> None:
    shop = make_shop()
    truth = shop.value(shop.target)
    assert abs(truth - shop.value(shop.logging)) > 0.02  # the target really differs
    rng = np.random.default_rng(11)
    runs = 400
    found: dict[str, list[tuple[float, float, float]]] = {"ips": [], "snips": []}
    for _ in range(runs):
        feedback, dist, _ = shop.draw(rng, 2_000)
        for estimate in (ips(feedback, dist), snips(feedback, dist)):
            found[estimate.estimator].append((estimate.value, estimate.low, estimate.high))
    for name, rows in found.items():
        values = np.array([r[0] for r in rows])
        # Unbiased: the mean over runs within 3.5 standard errors of the mean of the truth.
        assert abs(values.mean() - truth) < 3.5 * values.std(ddof=1) / math.sqrt(runs), name
        covered = np.mean([low <= truth <= high for _, low, high in rows])
        assert 0.91 <= covered <= 0.98, (name, covered)


def test_doubly_robust_with_a_good_reward_model_has_lower_variance_than_ips() -> None:
    shop = make_shop(items_differ=2.0)
    truth = shop.value(shop.target)
    rng = np.random.default_rng(5)
    runs = 20
    by: dict[str, list[float]] = {"ips": [], "dr": [], "dr_true": []}
    errors = []
    for run in range(runs):
        feedback, dist, types = shop.draw(rng, 3_000)
        log = as_log(shop, feedback, types)
        # The reward model the command uses, cross-fitted on two folds.
        rewards = cross_fit(log, fold_assignment(log.n_rounds, 2, run), lambda: ClickModel(1.0))
        true = shop.clicks[types]
        constant = np.abs(feedback.clicks.mean() - true).mean()
        errors.append(float(np.abs(rewards - true).mean() / constant))
        by["ips"].append(ips(feedback, dist).value)
        by["dr"].append(doubly_robust(feedback, dist, rewards).value)
        by["dr_true"].append(doubly_robust(feedback, dist, true).value)
    # A good model: its error a fraction of a constant rate's (it is well specified).
    assert np.mean(errors) < 0.3
    variance = {k: float(np.var(v, ddof=1)) for k, v in by.items()}
    assert variance["dr"] < 0.6 * variance["ips"], variance
    assert variance["dr_true"] < 0.6 * variance["ips"], variance
    for name, values in by.items():
        assert abs(np.mean(values) - truth) < 3.5 * math.sqrt(variance[name] / runs), name


def test_evaluating_the_logging_policy_gives_the_logged_mean() -> None:
    shop = make_shop()
    feedback, _, types = shop.draw(np.random.default_rng(2), 5_000)
    logging = shop.logging[types]
    mean = float(feedback.clicks.mean())
    assert np.all(importance_weights(feedback, logging) == 1.0)
    for estimate in (ips(feedback, logging), snips(feedback, logging)):
        assert estimate.value == pytest.approx(mean, rel=1e-12)
        assert estimate.difference == pytest.approx(0.0, abs=1e-15)
        assert estimate.ess == pytest.approx(feedback.n_rounds)
        assert estimate.effective_clicks == pytest.approx(feedback.clicks.sum())
        assert estimate.difference_clicks == 0 and not estimate.difference_few_clicks
    # Uniform logging over 80 items judged with the uniform distribution: weights exactly 1 too,
    # and DR's model part cancels its correction whatever the model says.
    rng = np.random.default_rng(6)
    items = rng.integers(0, 80, size=feedback.n_rounds)
    uniform = Feedback(items, feedback.positions, feedback.clicks, np.full(len(items), 1 / 80))
    dist = uniform_distribution(len(items), 80, 3)
    assert ips(uniform, dist).value == pytest.approx(mean, rel=1e-12)
    rewards = np.full(dist.shape, 0.2)
    assert doubly_robust(uniform, dist, rewards).value == pytest.approx(mean, rel=1e-12)


def test_effective_sample_size_and_clicks() -> None:
    assert effective_sample_size(np.ones(4)) == 4
    assert effective_sample_size(np.array([0.0, 2.0, 2.0, 0.0])) == 2
    assert effective_sample_size(np.zeros(3)) == 0
    # A greedy policy over 4 items on uniform logs: weight 4 where it agrees, else 0.
    feedback = Feedback(
        np.array([0, 1, 0, 2, 0, 3]),
        np.zeros(6, dtype=np.int64),
        np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        np.full(6, 0.25),
    )
    dist = np.zeros((6, 4, 1))
    dist[:, 0, 0] = 1.0
    estimate = ips(feedback, dist)
    assert estimate.ess == 3 and estimate.effective_clicks == 2
    assert estimate.value == pytest.approx(4 * 2 / 6)
    assert estimate.few_clicks
    # The difference from the logging policy rests on |w - 1| of the clicks: 3, 1 and 3.
    assert estimate.difference_clicks == pytest.approx(7**2 / (9 + 1 + 9))
    assert estimate.difference_few_clicks


# --------------------------------------------------------------------------- distributions


def brute_force_plackett_luce(logits: Array) -> Array:
    n = len(logits)
    w = np.exp(logits - logits.max())
    out = np.zeros((n, 3))
    for a, b, c in itertools.permutations(range(n), 3):
        after_a = sum(w[j] for j in range(n) if j != a)
        after_ab = sum(w[j] for j in range(n) if j not in (a, b))
        p = w[a] / w.sum() * w[b] / after_a * w[c] / after_ab
        out[a, 0] += p
        out[b, 1] += p
        out[c, 2] += p
    return out


def test_plackett_luce_marginals_are_exact_even_for_extreme_scores() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 10.0, 60.0):
        for n in (3, 5, 7):
            scores = rng.normal(0, scale, size=n)
            exact = plackett_luce_distribution(scores[None, :], 3, 1.0)[0]
            np.testing.assert_allclose(exact, brute_force_plackett_luce(scores), atol=1e-12)
    dist = plackett_luce_distribution(rng.normal(size=(50, 20)) * 3, 3, 0.7)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)  # one item per position
    assert dist.sum(axis=2).max() <= 1 + 1e-12  # an item fills one position at most
    # Cold: the greedy ranking; hot: uniform.
    scores = np.stack([rng.permutation(np.linspace(0, 2, 6)) for _ in range(4)])
    np.testing.assert_allclose(
        plackett_luce_distribution(scores, 3, 0.01), greedy_distribution(scores, 3), atol=1e-12
    )
    np.testing.assert_allclose(plackett_luce_distribution(scores, 3, 1e6), 1 / 6, atol=1e-6)


def test_greedy_distribution_shares_ties_at_random() -> None:
    scores = np.array([[3.0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    dist = greedy_distribution(scores, 3)
    np.testing.assert_allclose(dist[0, :, 0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(dist[0, :, 1], [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(dist[0, :, 2], [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(dist[1], 0.2)  # nothing to go on: uniform
    assert [int(np.argmax(dist[2, :, k])) for k in range(3)] == [4, 3, 2]


def test_blend_ranker_orders_by_affinity_then_by_train_click_share() -> None:
    shop = make_shop()
    feedback, _, types = shop.draw(np.random.default_rng(1), 4_000)
    log = as_log(shop, feedback, types)
    scorer = BlendScorer()
    scorer.fit(log, np.arange(log.n_rounds))
    clicks = np.bincount(log.actions, weights=log.clicks, minlength=log.n_items)
    by_clicks = np.argsort(-clicks, kind="stable")
    # Round 0: no affinity, so the popularity term alone (the click share) orders the items.
    # Round 1: affinity to the least clicked item only: the relevance term puts it first, and
    # the member's category weight (0.30) puts its category's items before any other (the
    # popularity term adds 0.15 at most).
    least = int(by_clicks[-1])
    affinity = np.zeros_like(log.affinity)
    affinity[1, least] = 3.0
    ranking = scorer.rank(BanditLog(**{**log.__dict__, "affinity": affinity}), np.arange(2))
    assert ranking.order is not None
    assert ranking.order[0].tolist() == by_clicks[:3].tolist()
    same = [int(j) for j in by_clicks if log.categories[j] == log.categories[least]]
    assert ranking.order[1].tolist() == [least, *[j for j in same if j != least][:2]]
    # The most clicked item's popularity is 1 (the share scaled to [0, 1]), its relevance 0.
    assert ranking.scores[0, by_clicks[0]] == pytest.approx(BlendWeights().popularity)


def test_nothing_learned_from_a_fold_is_used_to_judge_it() -> None:
    shop = make_shop()
    feedback, _, types = shop.draw(np.random.default_rng(4), 3_000)
    log = as_log(shop, feedback, types)
    fold_of = fold_assignment(log.n_rounds, 3, seed=1)
    judged = fold_of == 0
    # Flip every click of fold 0: what fold 0's rounds are judged by must not move.
    flipped = BanditLog(**{**log.__dict__, "clicks": np.where(judged, 1 - log.clicks, log.clicks)})
    scorers = [PopularityScorer(), BlendScorer()]
    before = judge(log, fold_of, scorers, 1.0, regularization=1.0)
    after = judge(flipped, fold_of, scorers, 1.0, regularization=1.0)
    np.testing.assert_array_equal(before.logged_reward[judged], after.logged_reward[judged])
    assert not np.array_equal(before.logged_reward[~judged], after.logged_reward[~judged])
    assert set(before.policies) == {
        "uniform",
        "popularity",
        "popularity-soft",
        "blend",
        "blend-soft",
    }
    for name, terms in before.policies.items():
        moved = after.policies[name]
        np.testing.assert_array_equal(terms.weights[judged], moved.weights[judged], name)
        np.testing.assert_array_equal(terms.model_reward[judged], moved.model_reward[judged], name)
        # The other folds' rounds are judged by models that did see the flipped clicks.
        assert not np.array_equal(terms.model_reward[~judged], moved.model_reward[~judged]), name
        if name != "uniform":
            assert not np.array_equal(terms.weights[~judged], moved.weights[~judged]), name


# --------------------------------------------------------------------------- the reader


def write_campaign(folder: Path, drop: str | None = None, click: str = "1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1,item_feature_2\n"
        "0,0,-0.5,cat-a,x\n1,2,0.25,cat-b,x\n2,1,1.0,cat-a,y\n",
        encoding="utf-8",
    )
    columns = [
        "",
        "timestamp",
        "item_id",
        "position",
        "click",
        "propensity_score",
        "user_feature_0",
        "user_feature_1",
        "user-item_affinity_0",
        "user-item_affinity_1",
        "user-item_affinity_2",
    ]
    rows = [
        ["0", "2019-11-24 00:00:01+00:00", "2", "1", "0", "0.3333333333333333", "u1", "v1"],
        ["1", "2019-11-24 00:00:02+00:00", "0", "3", click, "0.3333333333333333", "u2", "v1"],
        ["2", "2019-11-24 00:00:03+00:00", "1", "2", "0", "0.3333333333333333", "u1", "v2"],
    ]
    affinity = [["0.0", "0.0", "1.0"], ["2.0", "0.0", "0.0"], ["0.0", "0.0", "0.0"]]
    keep = [i for i, c in enumerate(columns) if c != drop]
    lines = [",".join(columns[i] for i in keep)]
    lines += [",".join((r + a)[i] for i in keep) for r, a in zip(rows, affinity, strict=True)]
    (folder / f"{folder.name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_reader_maps_items_positions_features_and_affinity(tmp_path: Path) -> None:
    log = read_open_bandit(write_campaign(tmp_path / "random" / "all"))
    assert log.name == "random/all" and log.n_rounds == 3 and log.n_positions == 3
    assert log.item_ids.tolist() == [0, 1, 2]  # sorted by id, whatever the file's order
    assert log.actions.tolist() == [2, 0, 1] and log.positions.tolist() == [0, 2, 1]
    assert log.clicks.tolist() == [0, 1, 0]
    assert log.uniform_logging
    assert log.user_features.tolist() == [[0, 0], [1, 0], [0, 1]]
    # user-item_affinity_<id> is the affinity to item <id>.
    assert log.affinity.tolist() == [[0, 0, 1], [2, 0, 0], [0, 0, 0]]
    assert log.item_numeric[:, 0].tolist() == [-0.5, 1.0, 0.25]
    assert log.categories == ("cat-a", "cat-a", "cat-b")
    assert log.item_categorical.shape == (3, 2)
    assert log.first.startswith("2019-11-24 00:00:01") and log.last.endswith("03+00:00")


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("click", "'click'"),
        ("propensity_score", "'propensity_score'"),
        ("user-item_affinity_1", "'user-item_affinity_1'"),
    ],
)
def test_reader_names_the_file_and_the_missing_column(
    tmp_path: Path, drop: str, named: str
) -> None:
    folder = write_campaign(tmp_path / "men", drop=drop)
    with pytest.raises(DataError, match="missing column") as raised:
        read_open_bandit(folder)
    assert str(folder / "men.csv") in str(raised.value) and named in str(raised.value)


def test_reader_names_the_line_and_column_of_a_bad_value(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"men.csv, line 3, column 'click'"):
        read_open_bandit(write_campaign(tmp_path / "men", click="yes"))
    with pytest.raises(DataError, match=r"no item_context.csv"):
        read_open_bandit(tmp_path)


# --------------------------------------------------------------------------- the command


@pytest.mark.skipif(not OPEN_BANDIT_RANDOM_ALL.is_dir(), reason="no Open Bandit sample here")
def test_command_on_the_open_bandit_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = recofleet_cli.main(
        ["evaluate-off-policy", "--data", str(OPEN_BANDIT_RANDOM_ALL), "--out", str(tmp_path)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "off_policy.json").read_text(encoding="utf-8"))
    assert set(report["policies"]) == POLICIES
    for name, policy in report["policies"].items():
        assert set(policy["estimates"]) == {"ips", "snips", "dr"}, name
        for estimator, e in policy["estimates"].items():
            figures = [e[k] for k in ("value", "low", "high", "std_error", "ess")]
            assert all(isinstance(v, float | int) and math.isfinite(v) for v in figures), (
                name,
                estimator,
            )
            assert e["low"] <= e["value"] <= e["high"]
            assert 0 < e["ess"] <= report["data"]["rounds"]
    observed = report["observed"]["value"]
    assert observed == pytest.approx(report["data"]["clicks"] / report["data"]["rounds"])
    uniform = report["policies"]["uniform"]
    assert uniform["logging"] is True
    assert uniform["estimates"]["ips"]["value"] == pytest.approx(observed, rel=1e-12)
    assert report["on_policy_check"]["passed"] is True
    assert "on-policy check" in printed and ": ok" in printed
    assert "uniform (logging)" in printed
