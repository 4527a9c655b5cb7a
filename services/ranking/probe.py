"""The probe a ranker must pass before it answers members: a fixed request, asked many times.

A model that loads but answers wrongly (NaN scores, fewer or more items than asked, an item
twice, an item that was not a candidate) or too slowly is refused, and the ranker that was
active stays. The request is synthetic but shaped like a real one: 200 candidates from
every source, a member with scores, affinities and a price band.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.gen.recofleet.common.v1 import common_pb2
from services.ranking.rankers import MemberContext, RankedItem, Ranker

SOURCES = ("als", "buy_again", "bought_together", "similar", "content", "trending", "popular")
PLACEMENTS = ("home", "product", "cart", "email")
CANDIDATES = 200
LIMITS = (10, CANDIDATES)


class RankerRefused(ValueError):
    """The ranker failed the probe; the message says how."""


@dataclass(frozen=True)
class ProbeResult:
    p99_ms: float
    median_ms: float
    calls: int


def probe_request(seed: int = 7) -> tuple[MemberContext, list[common_pb2.Candidate]]:
    rng = random.Random(seed)
    categories = [f"probe-category-{i}" for i in range(12)]
    candidates = []
    for index in range(CANDIDATES):
        source = SOURCES[index % len(SOURCES)]
        chance = rng.random() * 0.2
        candidates.append(
            common_pb2.Candidate(
                item_id=f"probe-item-{index}",
                score=chance,
                popularity=rng.random(),
                category=rng.choice(categories),
                source=source,
                sources={source: chance},
            )
        )
    weights = {c: rng.random() * 10 for c in categories[:5]}
    total = sum(weights.values())
    member = MemberContext(
        member_id="probe-member",
        category_weights=weights,
        orders=4,
        r_score=4,
        f_score=3,
        m_score=5,
        price_band="mid",
        price_percentile=0.55,
        affinities={c: w / total for c, w in weights.items()},
        lifecycle="active",
    )
    return member, candidates


def probe(ranker: Ranker, budget_ms: float, rounds: int = 10) -> ProbeResult:
    """Rank the probe request `rounds` times per placement and limit; `RankerRefused` on a
    wrong answer or a median time above `budget_ms`."""
    member, candidates = probe_request()
    ids = {c.item_id for c in candidates}
    timings: list[float] = []
    for _ in range(rounds):
        for placement in PLACEMENTS:
            for limit in LIMITS:
                started = time.perf_counter()
                try:
                    ranked = ranker.rank(member, candidates, placement, limit)
                except Exception as exc:  # any failure of a foreign model is a refusal
                    raise RankerRefused(f"failed on the probe request: {exc!r}") from exc
                timings.append((time.perf_counter() - started) * 1000)
                _check(ranked, ids, limit, placement)
    timings.sort()
    p99 = timings[min(len(timings) - 1, math.ceil(0.99 * len(timings)) - 1)]
    # Judged on the median: a model that is slow is slow on every call, while one call
    # preempted on a busy machine must not get a good model refused.
    median = timings[len(timings) // 2]
    if median > budget_ms:
        raise RankerRefused(
            f"too slow: {median:.1f} ms (median) for {CANDIDATES} candidates, over the budget "
            f"of {budget_ms:g} ms (RECOFLEET_RANKING_PROBE_BUDGET_MS)"
        )
    return ProbeResult(round(p99, 3), round(median, 3), len(timings))


def _check(ranked: Sequence[RankedItem], ids: set[str], limit: int, placement: str) -> None:
    where = f"(placement {placement}, limit {limit})"
    expected = min(limit, len(ids))
    if len(ranked) != expected:
        raise RankerRefused(f"answered {len(ranked)} items for {expected} asked {where}")
    seen: set[str] = set()
    for item in ranked:
        if not isinstance(item.score, int | float) or not math.isfinite(item.score):
            raise RankerRefused(
                f"scored {item.item_id} {item.score!r}, not a finite number {where}"
            )
        if item.item_id in seen:
            raise RankerRefused(f"answered {item.item_id} twice {where}")
        if item.item_id not in ids:
            raise RankerRefused(f"answered {item.item_id}, which was not a candidate {where}")
        seen.add(item.item_id)
