"""`recofleet evaluate`'s re-ranked served candidates: `served` (retrieval's order),
`served-blend` and `served-ltr` order the same candidates; the learned ranker trains on
the train part only, and learns a planted signal that retrieval's order misses."""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.events import EventType
from services.evaluation import cli, splits
from services.evaluation.data import Dataset, Interaction
from services.evaluation.fleet import (
    CANDIDATE_FACTOR,
    ServedBlendModel,
    ServedLtrModel,
    ServedModel,
    interactions_to_events,
)
from services.evaluation.models import default_models, models_by_name
from services.evaluation.report import evaluate
from services.retrieval.domain import Retriever

pytest.importorskip("lightgbm")

T0 = datetime(2025, 3, 3, tzinfo=UTC)
CATEGORIES = ["garden", "kitchen", "lighting", "toys", "books", "tools"]
DAYS = 70
TEST_DAYS = 14
TEST_ONLY = "only-sold-after-the-cutoff"
KS = (5, 10)


def priced_shop(members: int = 120, per_category: int = 40, seed: int = 2) -> Dataset:
    """A shop whose members each keep to a price level: nine baskets in ten hold items whose
    price sits near the member's level within their category, and nobody buys an item
    twice. Retrieval knows no prices; the learned ranker's price fit does. In the last
    TEST_DAYS a new item, TEST_ONLY, sells to a quarter of the members."""
    rng = random.Random(seed)
    items = [f"{c}-{k:02d}" for c in CATEGORIES for k in range(per_category)]
    category = {i: i.split("-")[0] for i in items}
    price = {i: round(10 ** rng.uniform(0, 2), 2) for i in items}
    place: dict[str, float] = {}
    for name in CATEGORIES:
        own = sorted((i for i in items if category[i] == name), key=price.__getitem__)
        place.update({i: (rank + 0.5) / len(own) for rank, i in enumerate(own)})
    rows = []
    for m in range(members):
        level, owned = rng.random(), set[str]()
        near = [i for i in items if abs(place[i] - level) < 0.06]
        for b in range(rng.randint(4, 10)):
            pool = [i for i in (near if rng.random() < 0.9 else items) if i not in owned]
            if len(pool) < 3:
                pool = [i for i in items if i not in owned]
            picked = sorted(rng.sample(pool, 3))
            owned.update(picked)
            at = T0 + timedelta(days=rng.uniform(0, DAYS))
            rows += [Interaction(f"m{m}", i, at, basket=f"m{m}-{b}") for i in picked]
        if m % 4 == 0:
            at = T0 + timedelta(days=DAYS - rng.uniform(0, TEST_DAYS - 1))
            rows.append(Interaction(f"m{m}", TEST_ONLY, at, basket=f"m{m}-new"))
    category[TEST_ONLY], price[TEST_ONLY] = "garden", 9.99
    return Dataset("priced-shop", "memory", sorted(rows, key=lambda r: r.at), category, price)


class Seen:
    """What the retriever answered, and what each re-ranker was given to order."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, frozenset[str]], list[tuple[str, ...]]] = defaultdict(list)
        self.ordered: dict[str, dict[str, set[tuple[str, ...]]]] = defaultdict(
            lambda: defaultdict(set)
        )


@pytest.fixture(scope="module")
def evaluated() -> Iterator[tuple[dict[str, Any], dict[str, Any], Seen, splits.Split]]:
    data = priced_shop()
    split = splits.temporal(data, last_days=TEST_DAYS)
    registry = models_by_name()
    models = [registry[name]() for name in ("served", "served-blend", "served-ltr")]
    seen = Seen()
    asked = Retriever.candidates
    orders: dict[type, Any] = {cls: cls._order for cls in (ServedBlendModel, ServedLtrModel)}

    def answering(self: Retriever, request: Any) -> Any:
        answer = asked(self, request)
        key = (request.member_id, frozenset(request.exclude))
        seen.answers[key].append(tuple(c.item_id for c in answer.candidates))
        return answer

    def spy(cls: type) -> Any:
        def ordering(self: Any, member: Any, candidates: Any, k: int) -> list[str]:
            seen.ordered[self.name][member.member_id].add(tuple(c.item_id for c in candidates))
            return orders[cls](self, member, candidates, k)

        return ordering

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Retriever, "candidates", answering)
        for cls in orders:
            patch.setattr(cls, "_order", spy(cls))
        report = evaluate(data, split, models, ks=KS, progress=False)
    yield report, {m.name: m for m in models}, seen, split
    for model in models:
        if isinstance(model, ServedModel):
            model.close()


def test_the_three_models_order_the_same_candidates(
    evaluated: tuple[dict[str, Any], dict[str, Any], Seen, splits.Split],
) -> None:
    report, models, seen, _ = evaluated
    assert set(report["models"]) == {"served", "served-blend", "served-ltr"}
    members = report["split"]["test_members"]
    # Asked once per member and mode (repeats allowed, train purchases excluded), for
    # CANDIDATE_FACTOR times the longest list, and never again per ranker.
    assert len(seen.answers) == 2 * members
    assert all(len(answers) == 1 for answers in seen.answers.values())
    by_member: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for (member, _), [answer] in seen.answers.items():
        by_member[member].add(answer)
        assert len(answer) == CANDIDATE_FACTOR * max(KS)
    for name in ("served-blend", "served-ltr"):
        assert dict(seen.ordered[name]) == dict(by_member)
    # `served` is retrieval's order: the first k of those same candidates.
    served: ServedModel = models["served"]
    assert served is models["served-blend"].served is models["served-ltr"].served
    lists = served.recommend(sorted(by_member), max(KS), {})
    for member, items in lists.items():
        [answer] = seen.answers[(member, frozenset())]
        assert items == list(answer[: max(KS)])
    notes = report["notes"]
    assert notes["served"]["order"].startswith("retrieval's")
    for name in ("served", "served-blend", "served-ltr"):
        assert notes[name]["candidates"]["asked_per_member"] == CANDIDATE_FACTOR * max(KS)
        assert notes[name]["conversion"]["function"].endswith("interactions_to_events")


def test_the_learned_ranker_never_sees_the_test_part(
    evaluated: tuple[dict[str, Any], dict[str, Any], Seen, splits.Split],
) -> None:
    report, models, _, split = evaluated
    cutoff = split.as_of()
    assert any(r.item_id == TEST_ONLY for r in split.test)
    ltr: ServedLtrModel = models["served-ltr"]
    state, meta = ltr.ranker.state, ltr.ranker.meta
    assert TEST_ONLY not in state
    assert set(state.item_ids) == {r.item_id for r in split.train}
    train_events = ltr.served.train_events
    assert meta["events"] == len(train_events)
    assert all(e.timestamp < cutoff for e in train_events)
    assert datetime.fromisoformat(meta["data_window"]["last"]) < cutoff
    # Nor do the members the rankers see: their recent items are train items.
    members = ltr.served.members()
    assert members.as_of == cutoff
    buyers = {r.member_id for r in split.test if r.item_id == TEST_ONLY}
    for member in buyers:
        assert TEST_ONLY not in members.context(member).recent_items
    notes = report["notes"]["served-ltr"]["ltr"]
    assert notes["events"] == len(train_events) and notes["trained_from"] == "interactions"
    assert "validation_ndcg@10" in notes["validation"]


def test_the_learned_order_beats_retrieval_order_on_a_planted_signal(
    evaluated: tuple[dict[str, Any], dict[str, Any], Seen, splits.Split],
) -> None:
    report, _, _, _ = evaluated
    for mode in ("models", "models_excluding_bought"):
        served = report[mode]["served"]["ndcg@10"]
        learned = report[mode]["served-ltr"]["ndcg@10"]
        assert learned > served + 0.02, (mode, learned, served)
    assert "price_fit" in report["notes"]["served-ltr"]["ltr"]["top_features"][:2]


def test_interactions_become_native_events_faithfully() -> None:
    at = T0 + timedelta(hours=1)
    rows = [
        Interaction("m1", "a", at, "purchase", 2.0, "o-1"),
        Interaction("m1", "b", at, "purchase", 1.0, "o-1"),
        Interaction("m1", "a", at, "purchase", 1.0, "o-1"),
        Interaction("m2", "a", at, "purchase", 1.0),
        Interaction("m2", "c", at, "purchase", 3.0),
        Interaction("m2", "a", at + timedelta(minutes=1), "view"),
        Interaction("m2", "b", at + timedelta(minutes=1), "view"),
        Interaction("m3", "c", at, "rate", 4.5),
        Interaction("m3", "c", at, "not-a-type"),
    ]
    events = interactions_to_events(rows, {"a": "garden"}, {"a": 2.5, "b": 0.0})
    order = next(e for e in events if e.order_id == "o-1")
    assert order.type == EventType.PURCHASE and order.member_id == "m1"
    assert [(i.item_id, i.quantity, i.price, i.category) for i in order.items] == [
        ("a", 3, 2.5, "garden"),
        ("b", 1, None, None),
    ]
    # Without a basket id, a member's purchases of one instant are one order.
    [basketless] = [e for e in events if e.member_id == "m2" and e.type == EventType.PURCHASE]
    assert basketless.order_id is None and [i.item_id for i in basketless.items] == ["a", "c"]
    views = [e for e in events if e.type == EventType.VIEW]
    assert [[i.item_id for i in e.items] for e in views] == [["a"], ["b"]]
    assert all(e.order_id is None for e in views)
    [rated] = [e for e in events if e.type == EventType.RATE]
    assert rated.rating == 4.5 and rated.items[0].quantity == 1
    assert len(events) == 5
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)


def test_the_reranked_models_run_by_default_and_by_name() -> None:
    assert default_models()[-3:] == ("served", "served-blend", "served-ltr")
    registry = models_by_name()
    assert {"served-blend", "served-ltr"} <= set(registry)
    parser = argparse.ArgumentParser(prog="recofleet")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--data", "d.csv", "--out", "o"])
    assert args.models[-2:] == ["served-blend", "served-ltr"]


def test_a_split_is_as_of_its_cutoff_or_its_newest_train_interaction() -> None:
    data = priced_shop(members=8)
    temporal = splits.temporal(data, cutoff=datetime(2025, 4, 28, 12))
    assert temporal.as_of() == datetime(2025, 4, 28, 12, tzinfo=UTC)
    assert max(r.at for r in temporal.train) < temporal.as_of()
    basket = splits.last_basket(data)
    assert basket.as_of() == max(r.at for r in basket.train)
