"""Off-policy evaluation: the click rate a ranking policy would get, estimated from another's logs.

The logs are those of the Open Bandit Dataset (ZOZOTOWN; Saito et al., NeurIPS 2021 Datasets
and Benchmarks). Each row, a *round*, is one impression: the member's features, the slot's
position (1-3), the item the logging policy put there, the probability it had of putting that
item there (`propensity_score`) and whether the member clicked. `read_open_bandit(folder)`
reads one campaign folder (the log CSV and its `item_context.csv`), of the small sample or of
the full data set alike.

The setting is the standard per-position ("independent") one of the data set's paper: each
round is judged alone, its position is part of its context, and a policy is a distribution over
the catalog at each position, `action_dist[round, item, position]`. A policy's value is its
expected click rate per impression over the logged members and positions. With the importance
weight w = pi(a | x, k) / pi_0(a | x, k) of the logged item a at the logged position k:

* IPS, mean(w r): unbiased when the logged propensities are right and the logging policy could
  show every item the evaluated one shows; its variance grows with the weights.
* SNIPS, sum(w r) / sum(w): IPS normalised by the mean weight. Biased by O(1/n) but consistent,
  and steadier than IPS when the weights are large and few.
* DR, mean(sum_a pi(a | x, k) q(x, a, k) + w (r - q(x, a, k))): a reward model q's prediction of
  the policy's click rate, corrected by IPS on its residuals. Unbiased when either the
  propensities or q are right, and lower in variance than IPS when q is good. Even a perfect q
  removes only the variance that comes from the click probability varying, never a click's
  own Bernoulli noise: at a click rate of 0.4% that leaves DR little to gain. q is
  cross-fitted: each round's prediction comes from a model that never saw that round.

Every estimate comes with a normal-approximation interval on its per-round terms (the
influence function for SNIPS), its difference from the logging policy's observed click rate
paired on the same rounds, the Kish effective sample size of the weights and the effective
number of clicks behind it. With a click rate near 0.4% a sample of 10,000 rounds holds about
40 clicks: the intervals are wide, and when few clicks carry an estimate (under about ten) the
normal approximation itself is not to be trusted.

Policies are built per fold of a K-fold split (`evaluate_off_policy`): whatever a policy learns
from the logs (the items' click rates) comes from the other folds only, like the reward model.
"""

from __future__ import annotations

import abc
import csv
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse

from services.common.candidates import Candidate
from services.evaluation.data import DataError
from services.ranking.rankers import BlendRanker, MemberContext
from services.ranking.settings import BlendWeights

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ITEM_CONTEXT = "item_context.csv"
LOG_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
ITEM_COLUMNS = ("item_id", "item_feature_0", "item_feature_1")
USER_FEATURE = "user_feature_"
ITEM_FEATURE = "item_feature_"
AFFINITY = "user-item_affinity_"
# The item feature the blend ranker reads as the item's category.
CATEGORY_FEATURE = "item_feature_1"
BEHAVIORS = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
ESTIMATORS = ("ips", "snips", "dr")
ESTIMATOR_NAMES = {"ips": "IPS", "snips": "SNIPS", "dr": "DR"}
INTERVAL_METHOD = (
    "normal approximation on the per-round terms (IPS, DR) or influence terms (SNIPS), "
    "standard error = their standard deviation / sqrt(rounds)"
)

DEFAULT_FOLDS = 5
DEFAULT_SEED = 42
DEFAULT_CONFIDENCE = 0.95
# Softened rankers sample a ranking from softmax(z / T), z the ranker's scores standardised
# within the round: at T = 1, one standard deviation of score multiplies an item's odds by e.
DEFAULT_TEMPERATURE = 1.0
# The reward model's inverse L2 strength. With ~30 clicks per train fold the features carry no
# measurable signal (docs/models.md): of C = 0.001-1, weaker regularisation than 0.01 added
# held-out log loss on every Open Bandit folder but bts/men, so the model stays near a constant.
DEFAULT_REGULARIZATION = 0.01
# Below this many effective clicks an interval is flagged: the normal approximation needs more.
FEW_CLICKS = 10.0

_ROWS_PER_CHUNK = 65_536
# Softmax logits are floored this far below the round's best, so that no weight underflows and
# no quotient of the marginals overflows; gaps up to it are exact.
_LOGIT_FLOOR = 300.0
_CELLS_PER_CHUNK = 1 << 21


# --------------------------------------------------------------------------- the logs


@dataclass(frozen=True)
class Feedback:
    """What the estimators read of the logs: per round, the item shown (its index in the
    catalog), its position (0-based), the click (0/1) and the logging policy's probability of
    that item at that position."""

    actions: IntArray
    positions: IntArray
    clicks: Array
    propensities: Array

    @property
    def n_rounds(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class BanditLog:
    """The logged rounds of one campaign and the catalog they were drawn from.

    Items are indexed 0..n_items-1 in the order of `item_ids`; positions are 0-based (the
    file's 1..n). `user_features` and `item_categorical` hold codes, one column per hashed
    feature; `categories` is each item's `item_feature_1`, the category the blend ranker sees.
    """

    name: str
    source: str
    item_ids: IntArray
    actions: IntArray
    positions: IntArray
    clicks: Array
    propensities: Array
    user_features: IntArray
    affinity: npt.NDArray[np.float32]
    item_numeric: Array
    item_categorical: IntArray
    categories: tuple[str, ...]
    n_positions: int
    first: str = ""
    last: str = ""

    @property
    def n_rounds(self) -> int:
        return len(self.actions)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def feedback(self) -> Feedback:
        return Feedback(self.actions, self.positions, self.clicks, self.propensities)

    @property
    def uniform_logging(self) -> bool:
        """Whether the logging policy drew each position's item uniformly from the catalog."""
        return bool(np.allclose(self.propensities, 1.0 / self.n_items, rtol=1e-6, atol=0.0))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "rounds": self.n_rounds,
            "items": self.n_items,
            "positions": self.n_positions,
            "clicks": int(self.clicks.sum()),
            "user_features": int(self.user_features.shape[1]),
            "first": self.first,
            "last": self.last,
            "logging_policy": "uniform random"
            if self.uniform_logging
            else "not uniform: the logged propensities",
        }


def campaign_folder(data: str | os.PathLike[str], behavior: str, campaign: str) -> Path:
    """The campaign folder to read: `data` itself when it holds an item_context.csv, else
    `data/<behavior>/<campaign>` (the layout of the Open Bandit Dataset, small or full)."""
    root = Path(data)
    if (root / ITEM_CONTEXT).is_file():
        return root
    folder = root / behavior / campaign
    if not folder.is_dir():
        raise DataError(
            f"{root}: no {ITEM_CONTEXT} here and no folder {behavior}/{campaign} "
            "(give a campaign folder, or the Open Bandit root with --behavior and --campaign)"
        )
    return folder


def read_open_bandit(folder: str | os.PathLike[str]) -> BanditLog:
    """One campaign folder: its item_context.csv and its log (`<folder name>.csv`, or the only
    other CSV there). Raises `DataError` naming the file, and the line and column when known."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    context = folder / ITEM_CONTEXT
    if not context.is_file():
        raise DataError(f"{folder}: no {ITEM_CONTEXT} (the campaign's item features)")
    items = _read_items(context)
    log_file = _log_file(folder)
    name = f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name
    return _read_rounds(log_file, items, name)


def _log_file(folder: Path) -> Path:
    named = folder / f"{folder.name}.csv"
    if named.is_file():
        return named
    others = sorted(p for p in folder.glob("*.csv") if p.name != ITEM_CONTEXT)
    if len(others) != 1:
        found = ", ".join(p.name for p in others) or "none"
        raise DataError(
            f"{folder}: expected {named.name} or one log CSV beside {ITEM_CONTEXT}, found {found}"
        )
    return others[0]


@dataclass(frozen=True)
class _Items:
    ids: IntArray
    numeric: Array
    categorical: IntArray
    categories: tuple[str, ...]


def _read_items(path: Path) -> _Items:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = _header(reader, path)
        _require(header, ITEM_COLUMNS, path)
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: no items")
    width = len(header)
    for line, row in enumerate(rows, start=2):
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {width}")
    column = {name: j for j, name in enumerate(header)}
    ids = _integers([r[column["item_id"]] for r in rows], path, "item_id", 2)
    if len(set(ids.tolist())) != len(ids):
        raise DataError(f"{path}: column 'item_id' repeats an item")
    numeric = _floats([r[column["item_feature_0"]] for r in rows], path, "item_feature_0", 2)
    hashed = sorted(
        (n for n in header if n.startswith(ITEM_FEATURE) and n != "item_feature_0"),
        key=_suffix,
    )
    categorical = np.stack([_codes([r[column[n]] for r in rows]) for n in hashed], axis=1).astype(
        np.int64
    )
    order = np.argsort(ids, kind="stable")
    categories = tuple(rows[i][column[CATEGORY_FEATURE]] for i in order)
    return _Items(ids[order], numeric[order, None], categorical[order], categories)


def _read_rounds(path: Path, items: _Items, name: str) -> BanditLog:
    index_of = {int(item_id): j for j, item_id in enumerate(items.ids)}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = _header(reader, path)
        affinity_columns = [f"{AFFINITY}{item_id}" for item_id in items.ids]
        _require(header, (*LOG_COLUMNS, *affinity_columns), path)
        column = {n: j for j, n in enumerate(header)}
        users = sorted((n for n in header if n.startswith(USER_FEATURE)), key=_suffix)
        affinity_at = [column[n] for n in affinity_columns]
        user_codes: list[dict[str, int]] = [{} for _ in users]
        parts: dict[str, list[Any]] = {k: [] for k in ("item", "pos", "click", "p", "u", "aff")}
        first = last = ""
        for start, chunk in _chunks(reader, len(header), path):
            if not first:
                first = chunk[0][column["timestamp"]]
            last = chunk[-1][column["timestamp"]]
            parts["item"].append(_item_indexes(chunk, column["item_id"], index_of, path, start))
            parts["pos"].append(_positions(chunk, column["position"], path, start))
            parts["click"].append(_clicks(chunk, column["click"], path, start))
            parts["p"].append(_propensities(chunk, column["propensity_score"], path, start))
            parts["u"].append(_user_codes(chunk, [column[n] for n in users], user_codes))
            parts["aff"].append(_affinity(chunk, affinity_at, affinity_columns, path, start))
    if not parts["item"]:
        raise DataError(f"{path}: no rounds")
    positions = np.concatenate(parts["pos"])
    n_positions = int(positions.max()) + 1
    if n_positions > len(items.ids):
        raise DataError(f"{path}: {n_positions} positions but only {len(items.ids)} items")
    return BanditLog(
        name=name,
        source=str(path),
        item_ids=items.ids,
        actions=np.concatenate(parts["item"]),
        positions=positions,
        clicks=np.concatenate(parts["click"]),
        propensities=np.concatenate(parts["p"]),
        user_features=np.concatenate(parts["u"]),
        affinity=np.concatenate(parts["aff"]),
        item_numeric=items.numeric,
        item_categorical=items.categorical,
        categories=items.categories,
        n_positions=n_positions,
        first=first,
        last=last,
    )


def _header(reader: Iterator[list[str]], path: Path) -> list[str]:
    try:
        return [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file") from None


def _require(header: Sequence[str], columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{path}: missing column(s) {shown}{more}")


def _suffix(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def _chunks(
    reader: Iterator[list[str]], width: int, path: Path
) -> Iterator[tuple[int, list[list[str]]]]:
    """Rows in chunks, with the file line of each chunk's first row (the header is line 1)."""
    chunk: list[list[str]] = []
    start = 2
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {width}")
        if not chunk:
            start = line
        chunk.append(row)
        if len(chunk) == _ROWS_PER_CHUNK:
            yield start, chunk
            chunk = []
    if chunk:
        yield start, chunk


def _floats(values: Sequence[str], path: Path, column: str, start: int) -> Array:
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except ValueError:
        numbers = np.array([_float_or_nan(v) for v in values])
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        at = int(bad[0])
        raise DataError(
            f"{path}, line {start + at}, column {column!r}: not a number: {values[at]!r}"
        )
    return numbers


def _float_or_nan(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _integers(values: Sequence[str], path: Path, column: str, start: int) -> IntArray:
    numbers = _floats(values, path, column, start)
    bad = np.flatnonzero(numbers != np.round(numbers))
    if len(bad):
        at = int(bad[0])
        raise DataError(
            f"{path}, line {start + at}, column {column!r}: not a whole number: {values[at]!r}"
        )
    return numbers.astype(np.int64)


def _item_indexes(
    chunk: list[list[str]], at: int, index_of: Mapping[int, int], path: Path, start: int
) -> IntArray:
    ids = _integers([row[at] for row in chunk], path, "item_id", start)
    indexes = np.array([index_of.get(int(i), -1) for i in ids], dtype=np.int64)
    bad = np.flatnonzero(indexes < 0)
    if len(bad):
        line = start + int(bad[0])
        raise DataError(
            f"{path}, line {line}, column 'item_id': item {ids[bad[0]]} is not in {ITEM_CONTEXT}"
        )
    return indexes


def _positions(chunk: list[list[str]], at: int, path: Path, start: int) -> IntArray:
    positions = _integers([row[at] for row in chunk], path, "position", start)
    bad = np.flatnonzero(positions < 1)
    if len(bad):
        line = start + int(bad[0])
        raise DataError(f"{path}, line {line}, column 'position': positions start at 1")
    return positions - 1


def _clicks(chunk: list[list[str]], at: int, path: Path, start: int) -> Array:
    clicks = _floats([row[at] for row in chunk], path, "click", start)
    bad = np.flatnonzero((clicks != 0) & (clicks != 1))
    if len(bad):
        line = start + int(bad[0])
        raise DataError(f"{path}, line {line}, column 'click': expected 0 or 1")
    return clicks


def _propensities(chunk: list[list[str]], at: int, path: Path, start: int) -> Array:
    p = _floats([row[at] for row in chunk], path, "propensity_score", start)
    bad = np.flatnonzero((p <= 0) | (p > 1))
    if len(bad):
        line = start + int(bad[0])
        raise DataError(
            f"{path}, line {line}, column 'propensity_score': a logged item's probability "
            f"must be in (0, 1], not {p[bad[0]]}"
        )
    return p


def _affinity(
    chunk: list[list[str]], at: Sequence[int], names: Sequence[str], path: Path, start: int
) -> npt.NDArray[np.float32]:
    cells = [[row[j] for j in at] for row in chunk]
    try:
        values = np.asarray(cells, dtype=np.float32)
    except ValueError:
        values = np.full((len(cells), len(at)), np.nan, dtype=np.float32)
        for i, row in enumerate(cells):
            for j, cell in enumerate(row):
                try:
                    values[i, j] = float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}, line {start + i}, column {names[j]!r}: not a number: {cell!r}"
                    ) from None
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise DataError(f"{path}, line {start + i}, column {names[j]!r}: not a finite number")
    return values


def _user_codes(
    chunk: list[list[str]], at: Sequence[int], seen: Sequence[dict[str, int]]
) -> IntArray:
    """Each hashed user feature as a code, numbered in order of first appearance in the file."""
    codes = np.empty((len(chunk), len(at)), dtype=np.int64)
    for j, (column, known) in enumerate(zip(at, seen, strict=True)):
        codes[:, j] = [known.setdefault(row[column], len(known)) for row in chunk]
    return codes


def _codes(values: Sequence[str]) -> IntArray:
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(v, len(seen)) for v in values], dtype=np.int64)


# --------------------------------------------------------------------------- estimators


@dataclass(frozen=True)
class PolicyEstimate:
    """One estimator's figure for one policy: the click rate per impression with its interval
    at `confidence`, and its difference from the logging policy's observed click rate on the
    same rounds (paired, so the two share their noise).

    `ess` is the Kish effective sample size of the importance weights, (sum w)^2 / sum w^2: the
    number of uniformly weighted rounds that would carry as much information. `effective_clicks`
    is the same over the clicked rounds: how many clicks the estimate really rests on.
    `difference_clicks` is the same of |w - 1| over the clicked rounds: how many clicks the
    difference from the logging policy rests on (0 when the policy is the logging one). A policy
    that agrees with the logging one in most rounds has an estimate resting on many clicks and
    a difference resting on the few where they part.
    """

    estimator: str
    value: float
    low: float
    high: float
    std_error: float
    difference: float
    difference_low: float
    difference_high: float
    ess: float
    effective_clicks: float
    difference_clicks: float
    rounds: int
    confidence: float

    @property
    def few_clicks(self) -> bool:
        """The estimate's interval rests on too few clicks to be trusted."""
        return self.effective_clicks < FEW_CLICKS

    @property
    def difference_few_clicks(self) -> bool:
        """The difference's interval rests on too few clicks to be trusted."""
        return 0 < self.difference_clicks < FEW_CLICKS


@dataclass(frozen=True)
class Observed:
    """The logging policy's own click rate on the logged rounds, with its interval."""

    value: float
    low: float
    high: float
    std_error: float
    clicks: int
    rounds: int
    confidence: float


def importance_weights(feedback: Feedback, action_dist: Array) -> Array:
    """w = pi(a | x, k) / pi_0(a | x, k) for the logged item a at the logged position k."""
    _check_distribution(feedback, action_dist)
    rounds = np.arange(feedback.n_rounds)
    chosen = action_dist[rounds, feedback.actions, feedback.positions]
    return np.asarray(chosen / feedback.propensities, dtype=np.float64)


def effective_sample_size(weights: Array) -> float:
    """Kish's (sum w)^2 / sum w^2; 0 when every weight is 0."""
    squares = float(np.square(weights).sum())
    return float(weights.sum()) ** 2 / squares if squares > 0 else 0.0


def observed(feedback: Feedback, confidence: float = DEFAULT_CONFIDENCE) -> Observed:
    """The mean click of the logged rounds: what the logging policy got."""
    clicks = feedback.clicks
    value = float(clicks.mean())
    se = _standard_error(clicks - value)
    half = _z(confidence) * se
    return Observed(
        value, value - half, value + half, se, int(clicks.sum()), len(clicks), confidence
    )


def ips(
    feedback: Feedback, action_dist: Array, confidence: float = DEFAULT_CONFIDENCE
) -> PolicyEstimate:
    """Inverse propensity scoring: mean(w r)."""
    return _ips(importance_weights(feedback, action_dist), feedback.clicks, confidence)


def snips(
    feedback: Feedback, action_dist: Array, confidence: float = DEFAULT_CONFIDENCE
) -> PolicyEstimate:
    """Self-normalised IPS: sum(w r) / sum(w); its interval is the delta method's, on the
    influence terms w (r - value) / mean(w). NaN when no logged item has a positive weight."""
    return _snips(importance_weights(feedback, action_dist), feedback.clicks, confidence)


def doubly_robust(
    feedback: Feedback,
    action_dist: Array,
    rewards: Array,
    confidence: float = DEFAULT_CONFIDENCE,
) -> PolicyEstimate:
    """Doubly robust: mean(sum_a pi(a | x, k) q(x, a, k) + w (r - q(x, a_logged, k))).

    `rewards` holds the reward model's click probabilities, shaped like `action_dist`; for an
    honest estimate each round's must come from a model fitted without it (`cross_fit`).
    """
    weights = importance_weights(feedback, action_dist)
    if rewards.shape != action_dist.shape:
        raise ValueError(f"rewards are {rewards.shape}, the distribution {action_dist.shape}")
    rounds = np.arange(feedback.n_rounds)
    logged = rewards[rounds, feedback.actions, feedback.positions]
    model = policy_reward(feedback, action_dist, rewards)
    return _doubly_robust(weights, feedback.clicks, model, logged, confidence)


def policy_reward(feedback: Feedback, action_dist: Array, rewards: Array) -> Array:
    """Per round, the reward model's click rate of the policy at the logged position:
    sum_a pi(a | x, k) q(x, a, k)."""
    rounds = np.arange(feedback.n_rounds)
    return np.asarray(
        np.einsum(
            "ri,ri->r",
            action_dist[rounds, :, feedback.positions],
            rewards[rounds, :, feedback.positions],
        )
    )


def _ips(weights: Array, clicks: Array, confidence: float) -> PolicyEstimate:
    terms = weights * clicks
    value = float(terms.mean())
    return _estimate("ips", value, terms - value, weights, clicks, confidence)


def _snips(weights: Array, clicks: Array, confidence: float) -> PolicyEstimate:
    mean_weight = float(weights.mean())
    if mean_weight <= 0:
        nan = np.full(len(weights), np.nan)
        return _estimate("snips", math.nan, nan, weights, clicks, confidence)
    value = float((weights * clicks).sum() / weights.sum())
    influence = weights * (clicks - value) / mean_weight
    return _estimate("snips", value, influence, weights, clicks, confidence)


def _doubly_robust(
    weights: Array, clicks: Array, model: Array, logged: Array, confidence: float
) -> PolicyEstimate:
    terms = model + weights * (clicks - logged)
    value = float(terms.mean())
    return _estimate("dr", value, terms - value, weights, clicks, confidence)


def _estimate(
    name: str,
    value: float,
    influence: Array,
    weights: Array,
    clicks: Array,
    confidence: float,
) -> PolicyEstimate:
    z = _z(confidence)
    se = _standard_error(influence)
    # Paired on the rounds: the estimate's terms less the logged click's, so the difference's
    # interval is narrower than the two intervals side by side suggest.
    difference_se = _standard_error(influence - (clicks - clicks.mean()))
    difference = value - float(clicks.mean())
    return PolicyEstimate(
        estimator=name,
        value=value,
        low=value - z * se,
        high=value + z * se,
        std_error=se,
        difference=difference,
        difference_low=difference - z * difference_se,
        difference_high=difference + z * difference_se,
        ess=effective_sample_size(weights),
        effective_clicks=effective_sample_size(weights[clicks > 0]),
        difference_clicks=effective_sample_size(np.abs(weights - 1)[clicks > 0]),
        rounds=len(clicks),
        confidence=confidence,
    )


def _standard_error(influence: Array) -> float:
    n = len(influence)
    if n < 2:
        return math.nan
    return float(np.std(influence, ddof=1)) / math.sqrt(n)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_distribution(feedback: Feedback, action_dist: Array) -> None:
    if action_dist.ndim != 3 or action_dist.shape[0] != feedback.n_rounds:
        raise ValueError(
            f"action_dist must be (rounds, items, positions) with {feedback.n_rounds} rounds, "
            f"not {action_dist.shape}"
        )
    if feedback.positions.max(initial=0) >= action_dist.shape[2]:
        raise ValueError(f"a logged position is beyond the distribution's {action_dist.shape[2]}")


# --------------------------------------------------------------------------- distributions


def uniform_distribution(n_rounds: int, n_items: int, n_positions: int) -> Array:
    """Every item equally likely at every position."""
    return np.full((n_rounds, n_items, n_positions), 1.0 / n_items)


def ranking_distribution(order: IntArray, n_items: int) -> Array:
    """A fixed ranking per round, `order[round, position]` = the item shown, as a distribution."""
    n_rounds, n_positions = order.shape
    dist = np.zeros((n_rounds, n_items, n_positions))
    rounds = np.repeat(np.arange(n_rounds), n_positions)
    positions = np.tile(np.arange(n_positions), n_rounds)
    dist[rounds, order.ravel(), positions] = 1.0
    return dist


def greedy_distribution(scores: Array, n_positions: int) -> Array:
    """The top `n_positions` items by score, ties broken uniformly at random: an item tied with
    g others over ranks [s, s + g] has probability 1 / (g + 1) at each of those positions. So
    where a ranker's scores say nothing (all equal), the ranking is uniform."""
    return _per_distinct_round(scores, lambda block: _greedy(block, n_positions))


def _greedy(scores: Array, n_positions: int) -> Array:
    n_rounds, n_items = scores.shape
    dist = np.zeros((n_rounds, n_items, n_positions))
    step = max(1, _CELLS_PER_CHUNK // (n_items * n_items))
    positions = np.arange(n_positions)
    for start in range(0, n_rounds, step):
        block = scores[start : start + step]
        above = (block[:, None, :] > block[:, :, None]).sum(axis=2)
        tied = (block[:, None, :] == block[:, :, None]).sum(axis=2)
        inside = (above[..., None] <= positions) & (positions < (above + tied)[..., None])
        dist[start : start + step] = inside / tied[..., None]
    return dist


def _per_distinct_round(scores: Array, distribution: Callable[[Array], Array]) -> Array:
    """`distribution` computed once per distinct row of scores: a popularity ranker's rounds
    are all alike, and most rounds of the Open Bandit data have no affinity at all."""
    rows = np.ascontiguousarray(scores)
    # Rows told apart by their bytes (np.unique over rows sorts them, at many times the cost).
    first: dict[bytes, int] = {}
    inverse = np.fromiter(
        (first.setdefault(row.tobytes(), len(first)) for row in rows), np.int64, len(rows)
    )
    _, representatives = np.unique(inverse, return_index=True)
    return distribution(rows[representatives])[inverse]


def standardized(scores: Array) -> Array:
    """Scores as z-scores within each round (0 where a round's scores are all equal), so that
    one temperature means the same for rankers whose scores have different scales."""
    mean = scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    flat = spread <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return np.where(flat, 0.0, (scores - mean) / np.where(flat, 1.0, spread))


def plackett_luce_distribution(scores: Array, n_positions: int, temperature: float) -> Array:
    """The exact per-position probabilities of a Plackett-Luce ranking: position 1 drawn from
    softmax(scores / temperature), position 2 from the same among the items left, and so on.
    Temperature -> 0 gives the greedy ranking (exactly while the logit gaps stay under 300:
    for standardised scores of 80 items, any temperature above 0.06), -> infinity the uniform
    one. Up to 3 positions (the Open Bandit slots): beyond, exact marginals cost more."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    n_items = scores.shape[1]
    if not 1 <= n_positions <= min(3, n_items):
        raise ValueError(f"exact marginals for 1 to min(3, items) positions, not {n_positions}")
    return _per_distinct_round(
        scores / temperature, lambda block: _plackett_luce_chunked(block, n_positions)
    )


def _plackett_luce_chunked(logits: Array, n_positions: int) -> Array:
    n_rounds, n_items = logits.shape
    dist = np.empty((n_rounds, n_items, n_positions))
    step = max(1, _CELLS_PER_CHUNK // (n_items * n_items))
    for start in range(0, n_rounds, step):
        dist[start : start + step] = _plackett_luce(logits[start : start + step], n_positions)
    return dist


def _plackett_luce(logits: Array, n_positions: int) -> Array:
    rows, n = logits.shape
    logits = np.maximum(logits - logits.max(axis=1, keepdims=True), -_LOGIT_FLOOR)
    w = np.exp(logits)
    total = w.sum(axis=1)
    first = w / total[:, None]
    out = [first]
    if n_positions == 1:
        return np.stack(out, axis=2)
    r = np.arange(rows)
    order = np.argsort(-w, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    ranked = np.take_along_axis(w, order, axis=1)
    # The weight left once the top item is drawn, summed rather than subtracted: total - w_top
    # loses every digit when the top item carries nearly all the weight.
    without_top = ranked[:, 1:].sum(axis=1)
    left = total[:, None] - w
    left[r, top] = without_top
    # P(a at 2) = w_a * sum_{b != a} P(b at 1) / left(b); sums that skip one term are taken as
    # prefix + suffix sums, never as the total minus the term.
    step = first / left
    out.append(w * _excluding(step))
    if n_positions == 2:
        return np.stack(out, axis=2)
    without_two = ranked[:, 2:].sum(axis=1)
    # left2[b, c]: the weight left once b then c are drawn.
    left2 = left[:, :, None] - w[:, None, :]
    left2[r, top, :] = without_top[:, None] - w
    left2[r, :, top] = without_top[:, None] - w
    left2[r, top, second] = without_two
    left2[r, second, top] = without_two
    diagonal = np.arange(n)
    left2[:, diagonal, diagonal] = 1.0
    # P(a at 3) = w_a * sum_{b != c, both != a} P(b at 1) w_c / left(b) / left2(b, c), each
    # factor divided on its own (left * left2 can underflow where their quotient does not).
    pair = (first / left)[:, :, None] * (w[:, None, :] / left2)
    pair[:, diagonal, diagonal] = 0.0
    # Summing every pair but a's row and column as total - row - column is exact enough for all
    # items but the two heaviest: a pair's term is at most 1 / (the weight outside the top two),
    # so the error is at most n^2 epsilon times w_a / that weight, which only they can make big.
    inner = pair.sum(axis=(1, 2))[:, None] - pair.sum(axis=2) - pair.sum(axis=1)
    for heavy in (top, second):
        masked = pair.copy()
        masked[r, heavy, :] = 0.0
        masked[r, :, heavy] = 0.0
        inner[r, heavy] = masked.sum(axis=(1, 2))
    out.append(w * np.maximum(inner, 0.0))
    return np.stack(out, axis=2)


def _excluding(values: Array) -> Array:
    """For each item, the sum of the others' values (prefix + suffix sums, no subtraction)."""
    zeros = np.zeros((len(values), 1))
    before = np.concatenate([zeros, np.cumsum(values, axis=1)[:, :-1]], axis=1)
    after = np.concatenate([np.cumsum(values[:, ::-1], axis=1)[:, ::-1][:, 1:], zeros], axis=1)
    return np.asarray(before + after)


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Ranking:
    """A ranker's scores for every item of each round, and the order it shows when it has its
    own (`None`: the top scores, ties shared)."""

    scores: Array
    order: IntArray | None = None


class Scorer(abc.ABC):
    """A ranker judged on the logs: `fit` sees train rounds only, `rank` the rounds judged."""

    name: str
    description: str

    def fit(self, log: BanditLog, rows: IntArray) -> None:  # noqa: B027 (most learn nothing)
        """Learn what the ranker needs from the logged rounds `rows`."""

    @abc.abstractmethod
    def rank(self, log: BanditLog, rows: IntArray) -> Ranking:
        """Scores (len(rows), n_items) for the rounds `rows`."""


def item_click_counts(log: BanditLog, rows: IntArray) -> tuple[Array, Array]:
    """Clicks and impressions per item over the rounds `rows`."""
    clicks = np.bincount(log.actions[rows], weights=log.clicks[rows], minlength=log.n_items)
    shown = np.bincount(log.actions[rows], minlength=log.n_items)
    return clicks.astype(np.float64), shown.astype(np.float64)


class PopularityScorer(Scorer):
    """Items by their click rate on the train rounds, shrunk towards the overall rate by one
    pseudo-click ((clicks + 1) / (impressions + 1 / CTR)), so that one lucky click on a rarely
    shown item does not put it first."""

    name = "popularity"
    description = "items by their train-fold click rate (one pseudo-click of shrinkage)"

    def __init__(self) -> None:
        self._rates = np.zeros(0)

    def fit(self, log: BanditLog, rows: IntArray) -> None:
        clicks, shown = item_click_counts(log, rows)
        total = clicks.sum()
        if total == 0:
            self._rates = np.zeros(log.n_items)
            return
        self._rates = (clicks + 1.0) / (shown + shown.sum() / total)

    def rank(self, log: BanditLog, rows: IntArray) -> Ranking:
        return Ranking(np.broadcast_to(self._rates, (len(rows), log.n_items)).copy())


class AffinityScorer(Scorer):
    """Items by the logged user-item affinity of the round (ties, mostly all-zero rows, shared
    at random: where the affinity says nothing this ranker is uniform)."""

    name = "affinity"
    description = "items by the round's logged user-item affinity (ties shared at random)"

    def rank(self, log: BanditLog, rows: IntArray) -> Ranking:
        return Ranking(log.affinity[rows].astype(np.float64))


class BlendScorer(Scorer):
    """The fleet's `BlendRanker` as served, on candidates built from the round: relevance is
    the user-item affinity, popularity the item's train-fold click share scaled to [0, 1] (its
    clicks over the most clicked item's), the category `item_feature_1`, and the member's
    category weights the round's affinities summed per category. Its order is its own (ties by
    item id, as the ranker breaks them)."""

    name = "blend"
    description = (
        "the fleet's BlendRanker: relevance = affinity, popularity = train-fold click share, "
        "category = item_feature_1"
    )

    def __init__(self, weights: BlendWeights | None = None) -> None:
        self._ranker = BlendRanker(weights or BlendWeights())
        self._popularity = np.zeros(0)

    def fit(self, log: BanditLog, rows: IntArray) -> None:
        clicks, _ = item_click_counts(log, rows)
        top = clicks.max(initial=0.0)
        self._popularity = clicks / top if top > 0 else np.zeros(log.n_items)

    def rank(self, log: BanditLog, rows: IntArray) -> Ranking:
        ids = [str(int(i)) for i in log.item_ids]
        index = {item_id: j for j, item_id in enumerate(ids)}
        scores = np.zeros((len(rows), log.n_items))
        order = np.zeros((len(rows), log.n_positions), dtype=np.int64)
        # Most rounds have no affinity at all and so the same answer: ask the ranker once.
        seen: dict[bytes, tuple[Array, IntArray]] = {}
        for out, row in enumerate(rows):
            affinity = log.affinity[row]
            key = affinity.tobytes()
            if key not in seen:
                seen[key] = self._rank_round(int(row), affinity, ids, index, log)
            scores[out], order[out] = seen[key]
        return Ranking(scores, order)

    def _rank_round(
        self,
        row: int,
        affinity: npt.NDArray[np.float32],
        ids: Sequence[str],
        index: Mapping[str, int],
        log: BanditLog,
    ) -> tuple[Array, IntArray]:
        weights: dict[str, float] = {}
        for j in np.flatnonzero(affinity):
            category = log.categories[j]
            weights[category] = weights.get(category, 0.0) + float(affinity[j])
        member = MemberContext(member_id=f"round-{row}", category_weights=weights)
        candidates = [
            Candidate(
                item_id=ids[j],
                score=float(affinity[j]),
                popularity=float(self._popularity[j]),
                category=log.categories[j],
            )
            for j in range(log.n_items)
        ]
        ranked = self._ranker.rank(member, candidates, "home", log.n_items)
        scores = np.zeros(log.n_items)
        for item in ranked:
            scores[index[item.item_id]] = item.score
        order = np.array([index[item.item_id] for item in ranked[: log.n_positions]])
        return scores, order


def default_scorers() -> list[Scorer]:
    return [PopularityScorer(), AffinityScorer(), BlendScorer()]


# --------------------------------------------------------------------------- reward model


class ClickModel:
    """P(click | member, item, position): a logistic regression, additive in the logit, on the
    member's hashed features (one-hot), the item's features (item_feature_0 and the others
    one-hot), the user-item affinity (log1p and whether positive) and the position (one-hot).

    Being additive, it predicts every item at every position of a round from one dot product
    per block instead of one design row per (round, item, position).
    """

    def __init__(self, regularization: float = DEFAULT_REGULARIZATION) -> None:
        self.regularization = regularization
        self._coef: dict[str, Array] = {}
        self._intercept = 0.0

    def fit(self, log: BanditLog, rows: IntArray) -> ClickModel:
        from sklearn.linear_model import LogisticRegression

        clicks = log.clicks[rows]
        actions, positions = log.actions[rows], log.positions[rows]
        users, items = _user_one_hot(log, rows), _item_block(log)
        widths = {
            "user": users.shape[1],
            "item": items.shape[1],
            "affinity": 2,
            "position": log.n_positions,
        }
        if clicks.min() == clicks.max():
            # One class only (no click in the train folds): their rate, kept off 0 and 1.
            rate = min(max(float(clicks.mean()), 0.5 / len(clicks)), 1 - 0.5 / len(clicks))
            self._intercept = math.log(rate / (1 - rate))
            self._coef = {key: np.zeros(width) for key, width in widths.items()}
            return self
        design = sparse.hstack(
            [
                users,
                sparse.csr_matrix(items[actions]),
                sparse.csr_matrix(_affinity_features(log.affinity[rows, actions])),
                sparse.csr_matrix(np.eye(log.n_positions)[positions]),
            ],
            format="csr",
        )
        model = LogisticRegression(C=self.regularization, max_iter=1000)
        model.fit(design, clicks)
        coef = np.asarray(model.coef_, dtype=np.float64).ravel()
        self._intercept = float(model.intercept_[0])
        start = 0
        for key, width in widths.items():
            self._coef[key] = coef[start : start + width]
            start += width
        return self

    def predict(self, log: BanditLog, rows: IntArray) -> Array:
        """Click probabilities (len(rows), n_items, n_positions)."""
        user = _user_one_hot(log, rows) @ self._coef["user"]
        item = _item_block(log) @ self._coef["item"]
        affinity = _affinity_features(log.affinity[rows]) @ self._coef["affinity"]
        logit = (
            self._intercept
            + np.asarray(user)[:, None, None]
            + item[None, :, None]
            + affinity[:, :, None]
            + self._coef["position"][None, None, :]
        )
        return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def _user_one_hot(log: BanditLog, rows: IntArray) -> sparse.csr_matrix:
    """One column per level (over the whole log) of each user feature, blocks side by side."""
    codes = log.user_features[rows]
    levels = log.user_features.max(axis=0) + 1
    offsets = np.concatenate([[0], np.cumsum(levels)[:-1]]).astype(np.int64)
    n, columns = codes.shape
    return sparse.csr_matrix(
        (np.ones(n * columns), (np.repeat(np.arange(n), columns), (codes + offsets).ravel())),
        shape=(n, int(levels.sum())),
    )


def _item_block(log: BanditLog) -> Array:
    """Per item: item_feature_0, then the hashed item features one-hot."""
    codes = log.item_categorical
    one_hot = [np.eye(int(codes[:, j].max()) + 1)[codes[:, j]] for j in range(codes.shape[1])]
    return np.hstack([log.item_numeric, *one_hot])


def _affinity_features(affinity: npt.NDArray[Any]) -> Array:
    values = np.asarray(affinity, dtype=np.float64)
    return np.stack([np.log1p(np.maximum(values, 0.0)), (values > 0).astype(np.float64)], axis=-1)


def fold_assignment(n_rounds: int, folds: int, seed: int) -> IntArray:
    """Each round's fold, 0..folds-1, in a seeded random order (balanced sizes)."""
    if not 2 <= folds <= n_rounds:
        raise ValueError(f"folds must be between 2 and the {n_rounds} rounds, not {folds}")
    return np.asarray(np.random.default_rng(seed).permutation(n_rounds) % folds, dtype=np.int64)


def cross_fit(
    log: BanditLog,
    fold_of: IntArray,
    model: Callable[[], ClickModel] = ClickModel,
) -> Array:
    """Reward-model predictions (rounds, items, positions), each round's from a model fitted on
    the other folds only."""
    rewards = np.empty((log.n_rounds, log.n_items, log.n_positions))
    for fold in np.unique(fold_of):
        judged = np.flatnonzero(fold_of == fold)
        train = np.flatnonzero(fold_of != fold)
        rewards[judged] = model().fit(log, train).predict(log, judged)
    return rewards


def reward_model_fit(log: BanditLog, logged_reward: Array, fold_of: IntArray) -> dict[str, Any]:
    """How well the cross-fitted reward model predicts the logged clicks: its log loss against
    that of each fold's train click rate, and its AUC (0.5 is chance)."""
    from sklearn.metrics import roc_auc_score

    predicted = np.clip(logged_reward, 1e-12, 1 - 1e-12)
    constant = np.empty(log.n_rounds)
    for fold in np.unique(fold_of):
        rate = float(log.clicks[fold_of != fold].mean())
        constant[fold_of == fold] = min(max(rate, 1e-12), 1 - 1e-12)
    clicks = log.clicks

    def loss(p: Array) -> float:
        return float(-np.mean(clicks * np.log(p) + (1 - clicks) * np.log(1 - p)))

    both = 0 < clicks.sum() < len(clicks)
    return {
        "log_loss": loss(predicted),
        "constant_log_loss": loss(constant),
        "auc": float(roc_auc_score(clicks, predicted)) if both else None,
    }


# --------------------------------------------------------------------------- the evaluation


@dataclass(frozen=True)
class RoundTerms:
    """What the estimators need of one policy, per round: the importance weight of the logged
    item and the reward model's click rate of the policy at the logged position; for a softened
    ranker, also its overlap with the greedy one at the round's positions, sum_a min(p, q)
    averaged over them: the chance it shows the greedy item (the report's `greedy_agreement`)."""

    weights: Array
    model_reward: Array
    overlap: Array | None = None


@dataclass(frozen=True)
class Judged:
    """Every policy's per-round terms over the whole log, each round's from a reward model and
    rankers fitted on the other folds; `logged_reward` is the reward model's click probability
    of the logged item."""

    policies: dict[str, RoundTerms]
    descriptions: dict[str, str]
    logged_reward: Array


def judge(
    log: BanditLog,
    fold_of: IntArray,
    scorers: Sequence[Scorer],
    temperature: float,
    regularization: float = DEFAULT_REGULARIZATION,
) -> Judged:
    """The uniform policy, and each ranker greedy (`<name>`: its top items) and softened
    (`<name>-soft`: Plackett-Luce on softmax(standardised scores / temperature)), on every round.

    Per fold, the reward model and the rankers are fitted on the other folds; the fold's rounds
    are then judged in chunks, so that only per-round vectors are kept, never a policy's whole
    (rounds, items, positions) distribution: the full Open Bandit data fits in memory too.
    """
    n = log.n_rounds
    descriptions = {"uniform": "every item equally likely at every position"}
    for scorer in scorers:
        descriptions[scorer.name] = f"{scorer.description}; greedy"
        descriptions[f"{scorer.name}-soft"] = (
            f"{scorer.description}; sampled by Plackett-Luce at temperature {temperature:g}"
        )
    weights = {name: np.empty(n) for name in descriptions}
    model_reward = {name: np.empty(n) for name in descriptions}
    overlap = {f"{s.name}-soft": np.empty(n) for s in scorers}
    logged_reward = np.empty(n)
    step = max(1, _CELLS_PER_CHUNK * 2 // (log.n_items * log.n_positions))
    for fold in np.unique(fold_of):
        train = np.flatnonzero(fold_of != fold)
        model = ClickModel(regularization).fit(log, train)
        for scorer in scorers:
            scorer.fit(log, train)
        judged = np.flatnonzero(fold_of == fold)
        for start in range(0, len(judged), step):
            rows = judged[start : start + step]
            feedback = Feedback(
                log.actions[rows], log.positions[rows], log.clicks[rows], log.propensities[rows]
            )
            rewards = model.predict(log, rows)
            logged_reward[rows] = rewards[
                np.arange(len(rows)), feedback.actions, feedback.positions
            ]

            shape = (len(rows), log.n_items, log.n_positions)
            chunk = [("uniform", uniform_distribution(*shape))]
            for scorer in scorers:
                ranking = scorer.rank(log, rows)
                greedy = (
                    greedy_distribution(ranking.scores, log.n_positions)
                    if ranking.order is None
                    else ranking_distribution(ranking.order, log.n_items)
                )
                soft = plackett_luce_distribution(
                    standardized(ranking.scores), log.n_positions, temperature
                )
                chunk += [(scorer.name, greedy), (f"{scorer.name}-soft", soft)]
                overlap[f"{scorer.name}-soft"][rows] = np.minimum(greedy, soft).sum(1).mean(1)
            for name, dist in chunk:
                weights[name][rows] = importance_weights(feedback, dist)
                model_reward[name][rows] = policy_reward(feedback, dist, rewards)
    return Judged(
        policies={
            name: RoundTerms(weights[name], model_reward[name], overlap.get(name))
            for name in descriptions
        },
        descriptions=descriptions,
        logged_reward=logged_reward,
    )


def estimates(
    terms: RoundTerms,
    logged_reward: Array,
    clicks: Array,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, PolicyEstimate]:
    """The three estimators from a policy's per-round terms."""
    return {
        "ips": _ips(terms.weights, clicks, confidence),
        "snips": _snips(terms.weights, clicks, confidence),
        "dr": _doubly_robust(terms.weights, clicks, terms.model_reward, logged_reward, confidence),
    }


def evaluate_off_policy(
    log: BanditLog,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    temperature: float = DEFAULT_TEMPERATURE,
    scorers: Sequence[Scorer] | None = None,
    regularization: float = DEFAULT_REGULARIZATION,
) -> dict[str, Any]:
    """Every policy by every estimator on the logs: the report `write_report` and
    `format_table` take. On logs of a uniform logging policy the `uniform` policy is that
    policy, and its IPS (weights all 1) equals the observed click rate: the built-in check."""
    _z(confidence)
    started = time.perf_counter()
    fold_of = fold_assignment(log.n_rounds, folds, seed)
    judged = judge(
        log,
        fold_of,
        default_scorers() if scorers is None else scorers,
        temperature,
        regularization,
    )
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    policies: dict[str, Any] = {}
    for name, terms in judged.policies.items():
        found = estimates(terms, judged.logged_reward, log.clicks, confidence)
        policies[name] = {
            "description": judged.descriptions[name],
            "logging": name == "uniform" and log.uniform_logging,
            "estimates": {
                k: {
                    **asdict(v),
                    "few_clicks": v.few_clicks,
                    "difference_few_clicks": v.difference_few_clicks,
                }
                for k, v in found.items()
            },
        }
        if terms.overlap is not None:
            policies[name]["greedy_agreement"] = float(terms.overlap.mean())
    seen = observed(log.feedback, confidence)
    check = None
    if log.uniform_logging:
        uniform_ips = policies["uniform"]["estimates"]["ips"]["value"]
        check = {
            "policy": "uniform",
            "ips": uniform_ips,
            "observed": seen.value,
            "passed": math.isclose(uniform_ips, seen.value, rel_tol=1e-9, abs_tol=1e-12),
        }
    return {
        "data": log.describe(),
        "settings": {
            "folds": folds,
            "seed": seed,
            "confidence": confidence,
            "temperature": temperature,
            "interval": INTERVAL_METHOD,
            "setting": "per position (independent): each impression judged alone",
            "reward_model": {
                "kind": "logistic regression (scikit-learn), cross-fitted on the folds",
                "features": "user features one-hot, item_feature_0, other item features "
                "one-hot, log1p(affinity) and affinity > 0, position one-hot",
                "C": regularization,
            },
            "few_clicks": FEW_CLICKS,
        },
        "observed": asdict(seen),
        "on_policy_check": check,
        "reward_model": reward_model_fit(log, judged.logged_reward, fold_of),
        "policies": policies,
        "timings": {
            "fit_and_rank_seconds": fit_seconds,
            "estimate_seconds": time.perf_counter() - started,
        },
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The report as the command prints it: one line per policy and estimator."""
    data, seen = report["data"], report["observed"]
    level = f"{report['settings']['confidence']:.0%}"
    lines = [
        f"{data['name']}: {data['rounds']:,} rounds, {data['items']} items, "
        f"{data['positions']} positions, {data['clicks']} clicks; logging policy: "
        f"{data['logging_policy']}",
        f"observed CTR of the logging policy: {seen['value']:.5f}  "
        f"{level} [{seen['low']:.5f}, {seen['high']:.5f}]",
        "",
    ]
    headers = [
        "policy",
        "estimator",
        "estimate",
        f"{level} interval",
        "ESS",
        "eff. clicks",
        "vs observed",
        f"{level} interval",
        "",
    ]
    rows = []
    for name, policy in report["policies"].items():
        label = f"{name} (logging)" if policy["logging"] else name
        for key in ESTIMATORS:
            e = policy["estimates"][key]
            interval = _interval(e["low"], e["high"])
            difference = _interval(e["difference_low"], e["difference_high"], signed=True)
            if e["effective_clicks"] == 0 and key != "dr":
                # 0 by construction, and a zero-width interval that means nothing.
                interval = difference = "no click matched"
            rows.append(
                [
                    label,
                    ESTIMATOR_NAMES[key],
                    _number(e["value"]),
                    interval,
                    f"{e['ess']:,.0f}",
                    f"{e['effective_clicks']:.1f}",
                    _number(e["difference"], signed=True),
                    difference,
                    "!" if e["few_clicks"] else ("!vs" if e["difference_few_clicks"] else ""),
                ]
            )
            label = ""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    check = report.get("on_policy_check")
    fit = report["reward_model"]
    lines += [
        "",
        "ESS: effective sample size of the importance weights; eff. clicks: the effective "
        "number of logged clicks the estimate rests on.",
        f"! fewer than {FEW_CLICKS:g} effective clicks: the intervals (normal approximations) "
        "are not to be trusted; !vs: the same for the 'vs observed' interval alone (the policy "
        "parts from the logging one in too few clicked rounds).",
        "An interval of 'vs observed' that contains 0 means the data cannot tell the policy "
        "from the logging one.",
        f"reward model (DR): cross-fitted log loss {fit['log_loss']:.5f} against "
        f"{fit['constant_log_loss']:.5f} for a constant rate"
        + (f", AUC {fit['auc']:.3f}" if fit["auc"] is not None else ""),
    ]
    soft = {
        n: p["greedy_agreement"] for n, p in report["policies"].items() if "greedy_agreement" in p
    }
    if soft:
        lines.append(
            "softened rankers (temperature "
            f"{report['settings']['temperature']:g}) show their greedy item at a position with "
            "probability " + ", ".join(f"{n} {v:.2f}" for n, v in soft.items())
        )
    if check is not None:
        verdict = "ok" if check["passed"] else "FAILED"
        lines.append(
            f"on-policy check: the logging policy's IPS {check['ips']:.6f} against the observed "
            f"CTR {check['observed']:.6f}: {verdict}"
        )
    else:
        lines.append(
            "on-policy check: not available, the logging policy is not uniform and only the "
            "shown item's probability is logged, so it cannot be reproduced"
        )
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """`off_policy.json` in `out_dir`: the report as strict JSON (NaN as null)."""
    from services.evaluation.report import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "off_policy.json"
    path.write_text(json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8")
    return path


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.5f}" if signed else f"{value:.5f}"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    return f"[{_number(low, signed)}, {_number(high, signed)}]"
