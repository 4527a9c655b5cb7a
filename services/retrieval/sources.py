"""The candidate sources: each proposes items, best first, for one request.

Every source reads the model, the member's latest interactions (newest first) and the
request's `allowed` mask (stock, category and excluded ids, over model positions), and
answers item ids. How their proposals are merged is services/retrieval/fusion.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np

from services.retrieval.catalog_view import CatalogView
from services.retrieval.index import ItemIndex
from services.retrieval.model import RetrievalModel
from services.retrieval.store import Activity

# What a member has, rather than looked at: buy-again proposes these, ALS the rest.
OWNING_TYPES = frozenset({"purchase", "rate"})
# How many of the member's latest distinct items seed "bought together" and "content".
SEEDS = 10
# A seed's weight in "bought together" is 1 / (1 + its recency rank / this): the latest
# item counts most. (The latest 50 seeds with a gentler decay did worse on Online Retail
# and on MovieLens: NDCG@10 0.343 vs 0.345 and 0.412 vs 0.428.)
SEED_DECAY = 1.0


@dataclass(frozen=True)
class Ask:
    """One request, as the sources see it."""

    activity: Sequence[Activity]
    seeds: Sequence[str]
    limit: int
    allowed: np.ndarray
    now: datetime
    excluded: frozenset[str] = frozenset()
    category: str = ""
    repeat: bool = True

    @cached_property
    def owned(self) -> frozenset[str]:
        return frozenset(a.item_id for a in self.activity if a.event_type in OWNING_TYPES)

    @cached_property
    def banned(self) -> frozenset[str]:
        """What no source but buy-again proposes: the seeds, and what the member owns (so
        each source is measured, and trusted, on items new to the member)."""
        return frozenset(self.seeds) | self.owned

    def member_seeds(self) -> list[str]:
        """The context items, or else the member's latest distinct items."""
        if self.seeds:
            return list(dict.fromkeys(self.seeds))
        return list(dict.fromkeys(a.item_id for a in self.activity))[:SEEDS]


def als(model: RetrievalModel, ask: Ask, keep_owned: bool = False) -> list[str]:
    """The member folded in from their latest interactions, searched by inner product; what
    they own is buy-again's to propose (unless `keep_owned`)."""
    summed: dict[int, float] = {}
    for line in ask.activity:
        position = model.position.get(line.item_id)
        if position is not None:
            summed[position] = summed.get(position, 0.0) + line.weight
    if not summed:
        return []
    vector = model.fold_in(summed)
    allowed = ask.allowed if keep_owned else _without(model, ask, ask.owned)
    return _search(model, model.parts.ip_index, vector, ask, allowed)


def buy_again(
    model: RetrievalModel, ask: Ask, catalog: CatalogView, half_life_days: float | None = None
) -> list[str]:
    """What the member bought, strongest first (`buy_again_strengths`)."""
    return list(buy_again_strengths(model, ask, catalog, half_life_days))


def buy_again_strengths(
    model: RetrievalModel, ask: Ask, catalog: CatalogView, half_life_days: float | None = None
) -> dict[str, float]:
    """What the member bought, by purchases decayed with age (the model's half-life,
    chosen at training, unless `half_life_days` is given), times
    1 + the item's popularity: of two items bought as often, the one most members buy is
    the likelier to be bought again (and the many ties of one order are broken). Strongest
    first, up to the ask's limit; the strength is what calibration reads (fusion.py)."""
    if not ask.repeat:
        return {}
    half_life = half_life_days or model.parts.buy_again_half_life_days
    score: dict[str, float] = {}
    for line in ask.activity:
        if line.event_type in OWNING_TYPES:
            days = max((ask.now - line.at).total_seconds(), 0.0) / 86_400
            score[line.item_id] = score.get(line.item_id, 0.0) + 0.5 ** (days / half_life)
    for item_id in score:
        score[item_id] *= 1.0 + model.popularity(item_id)
    ranked = [i for i in sorted(score, key=lambda i: -score[i]) if _allowed(model, ask, catalog, i)]
    return {i: score[i] for i in ranked[: ask.limit]}


def bought_together(model: RetrievalModel, ask: Ask) -> list[str]:
    """Items sharing baskets with the seeds, the latest seed counting most."""
    together = model.parts.together
    seeds = [model.position[i] for i in ask.member_seeds() if i in model.position]
    if not seeds:
        return []
    spans = [(together.indptr[p], together.indptr[p + 1]) for p in seeds]
    neighbours = np.concatenate([together.indices[a:b] for a, b in spans])
    strength = np.concatenate(
        [together.data[a:b] / (1 + order / SEED_DECAY) for order, (a, b) in enumerate(spans)]
    )
    found, slot = np.unique(neighbours, return_inverse=True)
    totals = np.bincount(slot, weights=strength)
    kept = found[ask.allowed[found]] if len(found) else found
    totals = totals[ask.allowed[found]] if len(found) else totals
    ranked = (model.item_ids[p] for p in kept[np.argsort(-totals, kind="stable")])
    return [i for i in ranked if i not in ask.banned][: ask.limit]


def similar(model: RetrievalModel, ask: Ask) -> list[str]:
    """Items nearest the context items' factors (cosine): the product page's neighbours."""
    positions = [model.position[i] for i in ask.seeds if i in model.position]
    if not positions:
        return []
    index = model.parts.cosine_index
    vector = np.mean([index.reconstruct(p) for p in positions], axis=0)
    return _search(model, index, vector, ask, _without(model, ask, ask.banned))


def content(model: RetrievalModel, ask: Ask, catalog: CatalogView) -> list[str]:
    """Popular items of the categories the seeds belong to, in turn by how many seeds each
    has; items added since training are met here, ranked as their category's median."""
    categories = Counter(c for c in map(catalog.category, ask.member_seeds()) if c)
    if ask.category:
        categories = Counter({ask.category: 1})
    lists = [
        _category_items(model, ask, catalog, category, ask.banned)
        for category, _ in categories.most_common(3)
    ]
    return _interleave(lists, ask.limit)


def trending(model: RetrievalModel, ask: Ask) -> list[str]:
    """What members took to lately (interactions decayed by age at training)."""
    return _ranked(model, model.by_trending, ask)


def popular(model: RetrievalModel, ask: Ask) -> list[str]:
    return _ranked(model, model.by_popularity, ask)


def _category_items(
    model: RetrievalModel, ask: Ask, catalog: CatalogView, category: str, banned: frozenset[str]
) -> list[str]:
    positions = catalog.positions(model, category)
    positions = positions[ask.allowed[positions]]
    wanted = ask.limit + len(banned)
    scores = -model.parts.popularity[positions]
    if len(positions) > wanted:  # the top of a large category without sorting all of it
        top = np.argpartition(scores, wanted)[:wanted]
        positions, scores = positions[top], scores[top]
    order = positions[np.argsort(scores, kind="stable")]
    ranked = [model.item_ids[p] for p in order]
    newcomers = [
        i for i in catalog.new_items(model, category) if i not in banned and i not in ask.excluded
    ]
    middle = len(ranked) // 2
    return [i for i in ranked[:middle] + newcomers[:3] + ranked[middle:] if i not in banned]


def _interleave(lists: Sequence[list[str]], limit: int) -> list[str]:
    merged: list[str] = []
    seen: set[str] = set()
    for rank in range(max((len(x) for x in lists), default=0)):
        for items in lists:
            if rank < len(items) and items[rank] not in seen:
                seen.add(items[rank])
                merged.append(items[rank])
    return merged[:limit]


def _ranked(model: RetrievalModel, order: np.ndarray, ask: Ask) -> list[str]:
    """The first `limit` allowed items of `order`, read a slice at a time: masking the
    whole order was a seventh of a request's time at 250,000 items (py-spy)."""
    step = max(2 * (ask.limit + len(ask.banned)), 256)
    found: list[str] = []
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        for position in chunk[ask.allowed[chunk]]:
            item_id = model.item_ids[position]
            if item_id not in ask.banned:
                found.append(item_id)
        if len(found) >= ask.limit:
            break
    return found[: ask.limit]


def _without(model: RetrievalModel, ask: Ask, items: frozenset[str]) -> np.ndarray:
    positions = [model.position[i] for i in items if i in model.position]
    if not positions:
        return ask.allowed
    mask = ask.allowed.copy()
    mask[positions] = False
    return mask


def _allowed(model: RetrievalModel, ask: Ask, catalog: CatalogView, item_id: str) -> bool:
    position = model.position.get(item_id)
    if position is None:
        # Bought since training, so in none of the model's masks: the catalog decides.
        in_category = not ask.category or catalog.category(item_id) == ask.category
        return item_id not in ask.excluded and catalog.in_stock(item_id) and in_category
    return bool(ask.allowed[position])


def _search(
    model: RetrievalModel, index: ItemIndex, vector: np.ndarray, ask: Ask, allowed: np.ndarray
) -> list[str]:
    positions, _ = index.search(vector, ask.limit, allowed)
    return [model.item_ids[int(p)] for p in positions]
