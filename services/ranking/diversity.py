"""Diversity per placement: at most so many items of one category near the top.

Applied after any ranker, so every ranker (a plug-in's too) gets it alike. The answer stays
as long as asked: items past their category's cap are not dropped but move behind the
others, in the ranker's order, so a short catalog still fills the list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from services.ranking.rankers import RankedItem


def capped(ranked: Sequence[RankedItem], limit: int, per_category: int) -> list[RankedItem]:
    """The first `limit` of `ranked` (best first) with at most `per_category` items of any one
    category among those that fit the cap; items without a category are never capped."""
    kept: list[RankedItem] = []
    held: list[RankedItem] = []
    seen: Counter[str] = Counter()
    for item in ranked:
        if item.category and seen[item.category] >= per_category:
            held.append(item)
            continue
        seen[item.category] += 1
        kept.append(item)
        if len(kept) == limit:
            return kept
    return (kept + held)[:limit]
