"""Top-k metrics of recommendation lists against held-out items.

Accuracy metrics (precision, recall, f1, ndcg, map, hit_rate) come from ranx's `evaluate`,
with binary relevance and ranx's definitions (precision@k divides by k even for a shorter list;
map@k divides by the number of relevant items). Every member with relevant items counts, an
empty or missing list as zero. Beyond-accuracy metrics are computed here:

* coverage@k: distinct items recommended in the top k over all evaluated members, divided by
  the train catalog's size;
* diversity@k: intra-list diversity by category, the share of pairs of a list whose items are
  in different categories (an item without a category is a category of its own), averaged
  over lists with at least two items;
* novelty@k: the mean self-information -log2(share of train members who interacted with the
  item) of a list's items, averaged over non-empty lists; an item no train member touched
  gets the largest value, that of an item touched by one member.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from services.evaluation.data import Interaction

RANX_METRICS = ("precision", "recall", "f1", "ndcg", "map", "hit_rate")
OWN_METRICS = ("coverage", "diversity", "novelty")
METRICS = RANX_METRICS + OWN_METRICS

Lists = Mapping[str, Sequence[str]]
Relevant = Mapping[str, Collection[str]]


def metric_names(ks: Sequence[int]) -> list[str]:
    """The keys `score` returns, in order: every metric at every k."""
    return [f"{metric}@{k}" for k in ks for metric in METRICS]


def score(
    recommendations: Lists,
    relevant: Relevant,
    ks: Sequence[int],
    train: Iterable[Interaction] = (),
    categories: Mapping[str, str] | None = None,
    catalog_size: int | None = None,
) -> dict[str, float]:
    """Every metric at every k, averaged over the members of `relevant` with relevant items.

    `train` gives the catalog (for coverage, unless `catalog_size` is given) and the item
    popularity (for novelty); `categories` maps items to categories (for diversity).
    """
    ks = _checked_ks(ks)
    members = [m for m in sorted(relevant) if relevant[m]]
    lists = {m: _top(recommendations.get(m, ()), max(ks)) for m in members}
    popularity, train_members = member_counts(train)
    catalog = len(popularity) if catalog_size is None else catalog_size
    accuracy = _ranx_means(lists, relevant, members, ks)
    scores: dict[str, float] = {}
    for k in ks:
        at_k = [lists[m][:k] for m in members]
        own = {
            "coverage": coverage(at_k, catalog),
            "diversity": diversity(at_k, categories or {}),
            "novelty": novelty(at_k, popularity, train_members),
        }
        for metric in METRICS:
            name = f"{metric}@{k}"
            scores[name] = accuracy[name] if metric in RANX_METRICS else own[metric]
    return scores


def per_member(
    recommendations: Lists, relevant: Relevant, k: int = 10, metric: str = "ndcg"
) -> dict[str, float]:
    """One ranx metric at `k` for each member of `relevant` with relevant items (0 if no list)."""
    if metric not in RANX_METRICS:
        raise ValueError(f"per-member metrics are {', '.join(RANX_METRICS)}, not {metric!r}")
    members = [m for m in sorted(relevant) if relevant[m]]
    lists = {m: _top(recommendations.get(m, ()), k) for m in members}
    return _ranx_scores(lists, relevant, members, [f"{metric}@{k}"])[f"{metric}@{k}"]


def _checked_ks(ks: Sequence[int]) -> list[int]:
    chosen = sorted(set(ks))
    if not chosen or chosen[0] < 1:
        raise ValueError(f"k values must be whole numbers >= 1, not {list(ks)}")
    return chosen


def _top(items: Sequence[str], k: int) -> list[str]:
    """The first k distinct items: a repeated item must not count twice as a hit."""
    return list(dict.fromkeys(items))[:k]


# --------------------------------------------------------------------------- ranx


def _ranx_means(
    lists: Mapping[str, list[str]], relevant: Relevant, members: list[str], ks: Sequence[int]
) -> dict[str, float]:
    names = [f"{metric}@{k}" for k in ks for metric in RANX_METRICS]
    if not members:
        return dict.fromkeys(names, 0.0)
    per = _ranx_scores(lists, relevant, members, names)
    return {name: float(np.mean(list(per[name].values()))) for name in names}


def _ranx_scores(
    lists: Mapping[str, list[str]], relevant: Relevant, members: list[str], names: list[str]
) -> dict[str, dict[str, float]]:
    """metric -> member -> value, for every member in `members` (missing lists count 0)."""
    if not any(lists.get(m) for m in members):
        return {name: dict.fromkeys(members, 0.0) for name in names}
    # ~2 s of imports (numba): only when scoring.
    from numba.typed import List as TypedList
    from ranx import evaluate  # type: ignore[import-untyped]

    # ranx's evaluate takes qrels and run as numba lists of (id, score) arrays, one per member
    # in the same order: what its Qrels and Run objects convert to. Building them directly
    # saves the seconds of numba compilation those objects' typed dicts cost in every process.
    # A member without a list gets an empty array, which ranx scores 0.
    codes: dict[str, int] = {}
    qrels = TypedList([_rows(relevant[m], codes, ranked=False) for m in members])
    run = TypedList([_rows(lists.get(m, []), codes, ranked=True) for m in members])
    with warnings.catch_warnings():
        # numba's note on a loop index cast inside ranx; the values are small counts.
        warnings.filterwarnings("ignore", message=".*unsafe cast.*")
        # With one metric and return_mean=False ranx 0.3.21 fails on its own result's key:
        # asking twice for it returns the usual dict.
        found = evaluate(qrels, run, names if len(names) > 1 else names * 2, return_mean=False)
    return {name: dict(zip(members, map(float, found[name]), strict=True)) for name in names}


def _rows(items: Collection[str], codes: dict[str, int], ranked: bool) -> np.ndarray:
    """(item code, score) rows: relevance 1 for qrels, strictly decreasing scores for a run
    (ranx reads a run's rows in order, best first)."""
    ids = np.array([codes.setdefault(item, len(codes)) for item in items], dtype=np.float64)
    scores = np.arange(len(ids), 0, -1, dtype=np.float64) if ranked else np.ones(len(ids))
    return np.column_stack((ids, scores)).reshape(-1, 2)


# --------------------------------------------------------------------------- beyond accuracy


def member_counts(train: Iterable[Interaction]) -> tuple[Counter[str], int]:
    """(item -> number of distinct train members who interacted with it, number of members)."""
    pairs = {(i.member_id, i.item_id) for i in train}
    return Counter(item for _, item in pairs), len({member for member, _ in pairs})


def coverage(lists: Iterable[Sequence[str]], catalog_size: int) -> float:
    """Distinct recommended items over the catalog size (0 for an empty catalog)."""
    if catalog_size <= 0:
        return 0.0
    return len({item for items in lists for item in items}) / catalog_size


def diversity(lists: Iterable[Sequence[str]], categories: Mapping[str, str]) -> float:
    """Mean share of item pairs in different categories, over lists of two items or more."""
    values = [_list_diversity(items, categories) for items in lists if len(items) >= 2]
    return float(np.mean(values)) if values else 0.0


def _list_diversity(items: Sequence[str], categories: Mapping[str, str]) -> float:
    # An uncategorised item is a category of its own: the tuple cannot equal a category name.
    groups = Counter[Any](categories.get(item, ("item", item)) for item in items)
    pairs = len(items) * (len(items) - 1) / 2
    same = sum(count * (count - 1) / 2 for count in groups.values())
    return 1.0 - same / pairs


def novelty(lists: Iterable[Sequence[str]], popularity: Mapping[str, int], members: int) -> float:
    """Mean self-information of the recommended items, over non-empty lists."""
    if members <= 0:
        return 0.0
    values = [
        float(np.mean([-math.log2(max(popularity.get(item, 0), 1) / members) for item in items]))
        for items in lists
        if items
    ]
    return float(np.mean(values)) if values else 0.0
