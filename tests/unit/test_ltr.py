"""The learned ranker: features alike in training and serving, a planted signal learnt, no
gain claimed where there is none, artifacts checked, impressions preferred to interactions."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.candidates import Candidate
from services.common.clock import Clock
from services.common.events import Event, EventType
from services.ranking.features import (
    FEATURE_NAMES,
    ItemFeatureState,
    feature_matrix,
    features,
)
from services.ranking.ltr import (
    META_FILE,
    LtrRanker,
    replay,
    train_ltr,
)
from services.ranking.rankers import MemberContext

START = datetime(2026, 1, 5, tzinfo=UTC)
CATEGORIES = ["garden", "kitchen", "lighting", "toys", "books", "tools", "bath", "sport"]
PER_CATEGORY = 25


def item_id(category: int, k: int) -> str:
    return f"{CATEGORIES[category]}-{k:02d}"


def shop(
    *,
    signal: bool,
    impressions: bool = False,
    members: int = 300,
    days: int = 56,
    seed: int = 7,
) -> list[Event]:
    """A synthetic shop's events, oldest first.

    With `signal`, members buy from their favourite category and from the week's hot
    items (each week eight others); without, they buy any item alike. With `impressions`,
    each visit the fleet shows 20 items, with a retrieval score that knows the member's
    taste only faintly, and the member clicks, carts or buys among those shown.
    """
    rng = np.random.default_rng(seed)
    items = [item_id(c, k) for c in range(len(CATEGORIES)) for k in range(PER_CATEGORY)]
    category_of = {i: CATEGORIES[n // PER_CATEGORY] for n, i in enumerate(items)}
    price = {i: float(np.round(rng.lognormal(3.0, 0.6), 2)) for i in items}
    favourite = rng.integers(0, len(CATEGORIES), members)
    hot = [list(rng.choice(items, 8, replace=False)) for _ in range(days // 7 + 1)]
    events: list[Event] = []
    n = 0

    def line(i: str) -> dict[str, Any]:
        return {"item_id": i, "price": price[i], "category": category_of[i]}

    def emit(kind: EventType, member: str, at: datetime, chosen: list[str], **extra: Any) -> None:
        nonlocal n
        n += 1
        events.append(
            Event(
                event_id=f"e-{n}",
                type=kind,
                member_id=member,
                items=[line(i) for i in chosen],
                timestamp=at,
                **extra,
            )
        )

    def wants(m: int, week: int) -> str:
        if not signal:
            return str(rng.choice(items))
        draw = rng.random()
        if draw < 0.5:
            return item_id(int(favourite[m]), int(rng.integers(0, PER_CATEGORY)))
        if draw < 0.85:
            return str(rng.choice(hot[week]))
        return str(rng.choice(items))

    for day in range(days):
        for m in range(members):
            if rng.random() > 0.15:
                continue
            member = f"m-{m}"
            at = START + timedelta(days=day, seconds=int(rng.integers(0, 80_000)))
            week = day // 7
            viewed = [wants(m, week) for _ in range(2)]
            emit(EventType.VIEW, member, at, viewed[:1])
            emit(EventType.VIEW, member, at + timedelta(seconds=30), viewed[1:])
            if not impressions:
                bought = list(dict.fromkeys(wants(m, week) for _ in range(int(rng.integers(1, 3)))))
                emit(
                    EventType.PURCHASE,
                    member,
                    at + timedelta(seconds=300),
                    bought,
                    order_id=f"o-{n}",
                )
                continue
            shown = list(dict.fromkeys(str(i) for i in rng.choice(items, 20, replace=False)))
            liked = {
                i: _utility(i, m, week, favourite, hot, category_of) if signal else 0.0
                for i in shown
            }
            scores = {i: round(0.15 * liked[i] + float(rng.random()), 4) for i in shown}
            shown.sort(key=lambda i: -scores[i])
            rec = f"r-{n}"
            emit(
                EventType.IMPRESSION,
                member,
                at + timedelta(seconds=60),
                shown,
                recommendation_id=rec,
                context={"placement": "home", "scores": scores},
            )
            picked = max(shown, key=lambda i: liked[i] + 0.8 * float(rng.random()))
            kind = [EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE][
                int(rng.integers(0, 3))
            ]
            emit(kind, member, at + timedelta(seconds=120), [picked], recommendation_id=rec)
    events.sort(key=lambda e: e.timestamp)
    return events


def _utility(
    i: str,
    m: int,
    week: int,
    favourite: np.ndarray,
    hot: list[list[str]],
    category_of: dict[str, str],
) -> float:
    return float(category_of[i] == CATEGORIES[int(favourite[m])]) + float(i in hot[week])


END = START + timedelta(days=57)
# Training on one thread: this suite shares two cores with whatever else runs, and
# LightGBM's threads spin-wait for each other on a busy machine (five times slower here).
FAST = {"num_threads": 1}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("planted")
    return out, train_ltr(shop(signal=True), out, now=END, **FAST)


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[Event]]:
    events = shop(signal=True, impressions=True)
    out = tmp_path_factory.mktemp("shown")
    return out, train_ltr(events, out, now=END, **FAST), events


def test_training_and_serving_compute_the_same_features() -> None:
    events = shop(signal=True, members=120, days=21)
    replayed = replay(events, now=END)
    groups = replayed.interactions[:: max(len(replayed.interactions) // 40, 1)]
    serving = ItemFeatureState()
    fed = 0
    rng = np.random.default_rng(3)
    compared = 0
    for group in groups:
        # Fed as a bus consumer would be: in batches of any size, up to the group's instant.
        while fed < len(events) and events[fed].timestamp < group.at:
            upto = min(fed + int(rng.integers(1, 50)), len(events))
            while upto > fed and events[upto - 1].timestamp >= group.at:
                upto -= 1
            serving.apply(events[fed:upto])
            fed = upto
        served = feature_matrix(
            group.member,
            group.candidates,
            group.placement,
            serving,
            group.at,
            group.recent,
            group.positions,
        )
        np.testing.assert_array_equal(served, group.features)
        row = features(
            group.member,
            group.candidates[0],
            group.placement,
            0,
            serving,
            group.at,
            group.recent,
        )
        expected = group.features[0].copy()
        expected[FEATURE_NAMES.index("retrieval_position")] = 0
        np.testing.assert_array_equal(row, expected)
        compared += 1
    assert compared >= 30
    # The comparison covered features that were there to compare, not zeros alike.
    seen = np.vstack([g.features for g in groups])
    for name in ("popularity_7d", "item_age_days", "category_affinity", "co_bought", "price_fit"):
        column = seen[:, FEATURE_NAMES.index(name)]
        assert np.nanmax(column) > 0 and np.nanmin(column) < np.nanmax(column), name
    assert np.isnan(seen[:, FEATURE_NAMES.index("retrieval_score")]).all()


def test_a_restored_state_gives_the_same_features() -> None:
    events = shop(signal=True, members=80, days=14)
    state = ItemFeatureState()
    state.apply(events)
    restored = ItemFeatureState.restore(state.snapshot())
    member = MemberContext("m-1", affinities={"garden": 0.6}, price_percentile=0.3)
    candidates = [Candidate(i, 0.1, category=state.category(i)) for i in state.item_ids[:60]]
    recent = state.item_ids[:5]
    now = END
    np.testing.assert_array_equal(
        feature_matrix(member, candidates, "cart", restored, now, recent),
        feature_matrix(member, candidates, "cart", state, now, recent),
    )
    # Redelivered events change nothing.
    assert restored.apply(events[-100:]) == 0
    with pytest.raises(ValueError, match="not an item feature state"):
        ItemFeatureState.restore(b"\x00garbage")


def test_the_ranker_learns_a_planted_signal_from_interactions(
    planted: tuple[Path, dict[str, Any]],
) -> None:
    _, meta = planted
    measured = meta["metrics"]["validation_ndcg@10"]

    assert meta["trained_from"] == "interactions"
    assert meta["metrics"]["baseline"] == "popularity_7d"
    assert measured["ltr"] > measured["baseline"] + 0.1, measured
    # No retrieval answered these groups: the artifact says what the model never saw.
    assert {"retrieval_score", "retrieval_position", "source_als"} <= set(meta["unseen_features"])
    assert meta["feature_importance"]["category_affinity"] > 0


def test_a_shop_without_signal_gets_no_large_gain(tmp_path: Path) -> None:
    meta = train_ltr(shop(signal=False, seed=11), tmp_path, now=END, **FAST)
    measured = meta["metrics"]["validation_ndcg@10"]

    assert meta["trained_from"] == "interactions"
    assert measured["gain"] < 0.05, measured


def test_impressions_with_outcomes_are_learnt_from_and_beat_retrieval_order(
    shown: tuple[Path, dict[str, Any], list[Event]],
) -> None:
    out, meta, events = shown
    measured = meta["metrics"]["validation_ndcg@10"]
    assert meta["trained_from"] == "impressions"
    assert meta["metrics"]["baseline"] == "retrieval_score"
    assert measured["ltr"] > measured["baseline"] + 0.1, measured

    # The served ranker, fed the events as the service's consumer would, ranks the
    # held-out impressions better than retrieval's scores did.
    ranker = LtrRanker.load(out, state=ItemFeatureState())
    held_out = [
        g
        for g in replay(events, now=END).impressions
        if g.at.isoformat(timespec="seconds") >= meta["data_window"]["validation_from"]
    ]
    assert len(held_out) >= 100
    fed, learnt, retrieval = 0, [], []
    for group in held_out:
        while fed < len(events) and events[fed].timestamp < group.at:
            ranker.state.apply([events[fed]])
            fed += 1
        scores = ranker.scores(
            group.member, group.candidates, group.placement, group.recent, now=group.at
        )
        learnt.append(_ndcg(scores, group.labels))
        retrieval.append(_ndcg(np.array([c.score for c in group.candidates]), group.labels))
    assert np.mean(learnt) > np.mean(retrieval) + 0.1
    assert np.mean(learnt) == pytest.approx(measured["ltr"], abs=0.05)


def test_impressions_without_outcomes_fall_back_to_interactions(tmp_path: Path) -> None:
    events = [
        e
        for e in shop(signal=True, impressions=True, members=150, days=28)
        if e.recommendation_id is None or e.type == EventType.IMPRESSION
    ]
    # Members still buy, just not from what they were shown.
    purchases = [
        Event(
            event_id=f"p-{e.event_id}",
            type=EventType.PURCHASE,
            member_id=e.member_id,
            items=e.items[:1],
            timestamp=e.timestamp + timedelta(seconds=1),
        )
        for e in events
        if e.type == EventType.VIEW
    ]
    mixed = sorted(events + purchases, key=lambda e: e.timestamp)

    meta = train_ltr(mixed, tmp_path, now=END, **FAST)

    assert meta["trained_from"] == "interactions"
    assert meta["groups"]["impressions_with_outcomes"] == 0


def test_an_artifact_with_other_features_is_refused(
    planted: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    source, _ = planted
    for name in ("model.txt", "state.bin"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    meta = json.loads((source / META_FILE).read_text())
    names = [n for n in meta["feature_names"] if n != "co_viewed"] + ["basket_size"]
    (tmp_path / META_FILE).write_text(json.dumps(meta | {"feature_names": names}))

    with pytest.raises(ValueError, match=r"missing \['co_viewed'\], unknown \['basket_size'\]"):
        LtrRanker.load(tmp_path)

    swapped = list(FEATURE_NAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    (tmp_path / META_FILE).write_text(json.dumps(meta | {"feature_names": swapped}))
    with pytest.raises(ValueError, match="feature 0 is 'retrieval_position' there"):
        LtrRanker.load(tmp_path)


def test_rank_returns_each_item_once_with_finite_scores(
    planted: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = planted
    ranker = LtrRanker.load(out, clock=Clock.fixed(END))
    known = ranker.state.item_ids
    candidates = [
        Candidate(
            i, 1.0 / (1 + r), category=ranker.state.category(i), source="als", sources={"als": 0.05}
        )
        for r, i in enumerate(known[:30])
    ]
    candidates += [Candidate("never-seen", math.nan), Candidate(known[0], 0.9)]
    gardener = MemberContext("m-1", affinities={"garden": 0.8, "toys": 0.2}, r_score=5)
    distinct = len({c.item_id for c in candidates})

    for limit in (0, 1, 10, distinct, distinct + 5):
        ranked = ranker.rank(gardener, candidates, "home", limit, recent_items=known[:3])
        assert len(ranked) == min(limit, distinct)
        assert len({r.item_id for r in ranked}) == len(ranked)
        assert all(math.isfinite(r.score) for r in ranked)
        assert all(r.reasons for r in ranked)
        assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    assert ranker.rank(gardener, [], "home", 10) == []

    ranked = ranker.rank(gardener, candidates, "home", 10, recent_items=known[:3])
    # The planted taste shows: the gardener's top items are garden items, and say so.
    assert sum(r.category == "garden" for r in ranked[:5]) >= 3
    assert any("you like garden" in r.reasons for r in ranked)


def _ndcg(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.lexsort((np.arange(len(scores)), -scores))[:10]
    gains = 2.0**labels - 1
    discounts = 1 / np.log2(np.arange(2, 12))
    ideal = (np.sort(gains)[::-1][:10] * discounts[: min(10, len(gains))]).sum()
    return float((gains[order] * discounts[: len(order)]).sum() / ideal)
