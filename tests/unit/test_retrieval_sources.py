"""Retrieval's candidate sources and their fusion, as a user of the candidates sees them.

Two small synthetic shops, each on SQLite and on PostgreSQL (the `engine` fixture of
conftest.py):

- the pairs shop: three categories of 15 items, 60 members who each look at 8 items of
  their category (and one of another), then buy two of its pairs, each pair in one order
  (books-00 with books-01, books-02 with books-03, ...). Nobody buys an item twice.
- the grocer: three aisles of 10 items, 45 members who each buy their three staples of
  one aisle in every weekly order, with one other item of the aisle now and then.

Fusion's arithmetic is also checked on its own, without a shop.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from services.common.bus.base import EVENTS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.candidates import Candidate
from services.common.events import CatalogItem, Event, event_records
from services.retrieval import sources
from services.retrieval.domain import Answer, CandidateRequest, Retriever
from services.retrieval.fusion import Calibration, fit_curve, fit_strengths, fuse
from services.retrieval.model import COSINE_INDEX_FILE, IP_INDEX_FILE, ITEMS_FILE
from services.retrieval.model_store import LocalModelStore
from services.retrieval.server import interaction_worker
from services.retrieval.settings import PlacementMix, RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train

START = datetime(2026, 3, 1, tzinfo=UTC)
# Small shops: a lighter ALS than the defaults (see tests/unit/test_retrieval.py).
SETTINGS = RetrievalSettings(factors=16, iterations=10, regularization=1.0)
HOME = SETTINGS.placements["home"]

CATEGORIES = ("books", "garden", "toys")
ITEMS = {c: [f"{c}-{n:02d}" for n in range(15)] for c in CATEGORIES}
CATEGORY_OF = {item: c for c, items in ITEMS.items() for item in items}
PAIRS = [(ITEMS[c][k], ITEMS[c][k + 1]) for c in CATEGORIES for k in range(0, 14, 2)]
MEMBERS = {f"m-{n:02d}": CATEGORIES[n % 3] for n in range(60)}

AISLES = ("produce", "dairy", "bakery")
GROCERIES = {a: [f"{a}-{n:02d}" for n in range(10)] for a in AISLES}
AISLE_OF = {item: a for a, items in GROCERIES.items() for item in items}
SHOPPERS = {f"s-{n:02d}": AISLES[n % 3] for n in range(45)}


def event(type_: str, member: str, at: datetime, *items: str, n: int = 0) -> Event:
    fields: dict[str, object] = {
        "event_id": f"{member}-{type_}-{'+'.join(items)}-{at.isoformat()}-{n}",
        "type": type_,
        "member_id": member,
        "timestamp": at,
    }
    if len(items) == 1:
        fields["item_id"] = items[0]
    else:
        fields["items"] = [{"item_id": i} for i in items]
    return Event.model_validate(fields)


def pairs_shop_events() -> list[Event]:
    rng = random.Random(5)
    events: list[Event] = []
    minute = 0

    def at() -> datetime:
        nonlocal minute
        minute += 1
        return START + timedelta(minutes=minute)

    for member, category in MEMBERS.items():
        for item in rng.sample(ITEMS[category], 8):
            events.append(event("view", member, at(), item))
        stray = rng.choice([c for c in CATEGORIES if c != category])
        events.append(event("view", member, at(), rng.choice(ITEMS[stray])))
        mine = [p for p in PAIRS if CATEGORY_OF[p[0]] == category]
        for pair in rng.sample(mine, 2):
            events.append(event("purchase", member, at(), *pair))
    return events


def grocer_events() -> list[Event]:
    rng = random.Random(3)
    events: list[Event] = []
    for n, (shopper, aisle) in enumerate(SHOPPERS.items()):
        staples = rng.sample(GROCERIES[aisle], 3)
        for week in range(8):
            basket = list(staples)
            if rng.random() < 0.5:
                basket.append(rng.choice([i for i in GROCERIES[aisle] if i not in staples]))
            at = START + timedelta(weeks=week, minutes=n)
            events.append(event("purchase", shopper, at, *basket))
    return events


@dataclass
class Shop:
    store: SqlInteractionStore
    models: LocalModelStore
    retriever: Retriever
    events: list[Event]
    now: datetime

    def ask(self, **fields: object) -> Answer:
        return self.retriever.candidates(CandidateRequest(**fields))  # type: ignore[arg-type]

    def owned(self, member: str) -> set[str]:
        return {
            str(line.item_id)
            for e in self.events
            if e.member_id == member and e.type.value == "purchase"
            for line in e.lines()
        }

    def viewed(self, member: str) -> set[str]:
        return {
            str(e.item_id) for e in self.events if e.member_id == member and e.type.value == "view"
        }

    def retriever_with(self, settings: RetrievalSettings) -> Retriever:
        retriever = Retriever(self.store, self.models, settings, clock=lambda: self.now)
        assert retriever.reload()
        return retriever


def open_shop(
    engine: Engine,
    folder: Path,
    events: list[Event],
    categories: dict[str, str],
    trained: Path,
) -> Shop:
    """The shop's store on `engine`, and its model: trained once per shop and engine (in
    `trained`), copied for every further test."""
    store = SqlInteractionStore(engine, SETTINGS.event_weights)
    store.apply_events(events)
    store.save_catalog([CatalogItem(item_id=i, category=c) for i, c in categories.items()])
    if not trained.exists():
        staging = trained.with_name(f"{trained.name}.staging")  # no half-trained cache
        assert train(store, LocalModelStore(staging), SETTINGS).trained
        staging.rename(trained)
    shutil.copytree(trained, folder / "models")
    models = LocalModelStore(folder / "models")
    now = max(e.timestamp for e in events) + timedelta(hours=1)
    retriever = Retriever(store, models, SETTINGS, clock=lambda: now)
    assert retriever.reload()
    return Shop(store, models, retriever, events, now)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trained")


@pytest.fixture
def pairs(engine: Engine, tmp_path: Path, trained: Path) -> Shop:
    model = trained / f"pairs-{engine.dialect.name}"
    return open_shop(engine, tmp_path, pairs_shop_events(), CATEGORY_OF, model)


@pytest.fixture
def grocer(engine: Engine, tmp_path: Path, trained: Path) -> Shop:
    model = trained / f"grocer-{engine.dialect.name}"
    return open_shop(engine, tmp_path, grocer_events(), AISLE_OF, model)


def ids(candidates: Sequence[Candidate]) -> list[str]:
    return [c.item_id for c in candidates]


def non_increasing(values: Sequence[float]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(values))


# --- fusion -----------------------------------------------------------------------------


def test_a_fitted_calibration_curve_never_rises_with_rank() -> None:
    # Hits that go up and down with rank, as a few hundred held-out members give them.
    hits = np.array([30, 12, 19, 4, 9, 9, 0, 6, 1, 3], dtype=float)
    asked = np.array([100, 100, 100, 90, 90, 80, 60, 60, 10, 2], dtype=float)

    curve = fit_curve(hits, asked)

    assert len(curve) == len(hits)
    assert non_increasing(curve), curve
    assert all(0 < p <= 1 for p in curve)
    assert curve[0] > curve[-1]
    # Read past its end (and for a source never measured), the chance keeps falling.
    calibration = Calibration({"als": curve})
    for source in ("als", "never-measured"):
        chances = [calibration.probability(source, rank) for rank in range(1, 300)]
        assert non_increasing(chances), source
        assert chances[-1] > 0


def test_a_trained_models_calibration_curves_never_rise_with_rank(pairs: Shop) -> None:
    calibration = pairs.retriever.model.parts.calibration

    assert calibration.measured_on > 0
    # The home page's sources were all measured (similar is the product page's).
    assert set(HOME.sources) | {"similar"} <= set(calibration.by_source)
    for source, curve in calibration.by_source.items():
        assert non_increasing(curve), (source, curve)
        assert all(0 < p <= 1 for p in curve), (source, curve)


def test_an_item_two_sources_propose_scores_above_the_same_item_from_one() -> None:
    calibration = Calibration({"als": [0.3, 0.2, 0.1], "content": [0.2, 0.1]})
    weights = {"als": 1.0, "content": 1.0}

    alone = fuse({"als": ["x", "y"]}, calibration, weights)
    agreed = fuse({"als": ["x", "y"], "content": ["y"]}, calibration, weights)

    alone_y = next(f for f in alone if f.item_id == "y")
    agreed_y = next(f for f in agreed if f.item_id == "y")
    assert agreed_y.score > alone_y.score == pytest.approx(0.2)
    # The best source's chance, and a tenth of the other's.
    assert agreed_y.score == pytest.approx(0.2 + 0.1 * 0.2)
    assert agreed_y.sources == pytest.approx({"als": 0.2, "content": 0.2})
    # At equal chances, the item two sources agree on ranks first.
    even = Calibration({"als": [0.2, 0.2], "content": [0.2]})
    assert ids_of(fuse({"als": ["a", "b"], "content": ["b"]}, even, weights)) == ["b", "a"]


def ids_of(fused: Sequence[object]) -> list[str]:
    return [f.item_id for f in fused]  # type: ignore[attr-defined]


def test_a_placement_weight_scales_a_source_and_zero_turns_it_off() -> None:
    calibration = Calibration({"als": [0.4, 0.3], "trending": [0.2, 0.1]})
    proposals = {"als": ["a", "b"], "trending": ["b", "c"]}

    halved = fuse(proposals, calibration, {"als": 0.5, "trending": 1.0})
    off = fuse(proposals, calibration, {"als": 1.0, "trending": 0.0})
    absent = fuse(proposals, calibration, {"als": 1.0})

    chances = {f.item_id: f.sources for f in halved}
    assert chances.keys() == {"a", "b", "c"}
    assert chances["a"] == pytest.approx({"als": 0.2})
    assert chances["b"] == pytest.approx({"als": 0.15, "trending": 0.2})
    assert chances["c"] == pytest.approx({"trending": 0.1})
    for fused in (off, absent):
        assert ids_of(fused) == ["a", "b"]
        assert all(set(f.sources) == {"als"} for f in fused)


def test_a_source_weighted_zero_in_a_placement_proposes_nothing(pairs: Shop) -> None:
    member = "m-00"
    everything = pairs.ask(member_id=member, limit=20).candidates
    assert {"bought_together", "content"} <= {s for c in everything for s in c.sources}
    mix = PlacementMix(sources=dict(HOME.sources) | {"bought_together": 0.0, "content": 0.0})
    muted = pairs.retriever_with(SETTINGS.model_copy(update={"placements": {"home": mix}}))

    answer = muted.candidates(CandidateRequest(member, limit=20)).candidates

    assert len(answer) == 20
    assert not {"bought_together", "content"} & {s for c in answer for s in c.sources}
    assert {"als", "trending"} <= {s for c in answer for s in c.sources}


# --- buy again --------------------------------------------------------------------------


def regular(shop: Shop, member: str = "regular") -> tuple[str, str]:
    """A member who, lately, bought A three times and B once; returns (A, B)."""
    a, b = GROCERIES["dairy"][0], GROCERIES["dairy"][5]
    # B the latest: what leads is how often, not how lately.
    bought = [(a, 96), (a, 72), (a, 48), (b, 24)]
    shop.store.apply_events(
        [event("purchase", member, shop.now - timedelta(hours=h), i) for i, h in bought]
    )
    return a, b


def test_what_a_member_buys_most_comes_back_first(grocer: Shop) -> None:
    a, b = regular(grocer)

    answer = grocer.retriever.for_member("regular", 10, [])

    found = ids(answer.candidates)
    assert answer.personalized
    assert found[:2] == [a, b], answer.candidates
    assert all(c.source == "buy_again" for c in answer.candidates[:2])


def test_a_placement_without_repeat_purchases_never_proposes_them(grocer: Shop) -> None:
    a, b = regular(grocer)
    no_repeats = PlacementMix(sources=dict(HOME.sources), repeat_purchases=False)
    settings = SETTINGS.model_copy(update={"placements": {"home": no_repeats}})
    retriever = grocer.retriever_with(settings)
    catalog = len(AISLE_OF)

    # Up to the whole catalog: the padding with popular items keeps to the rule too.
    for limit in (5, 10, catalog - 2, catalog):
        answer = retriever.for_member("regular", limit, [])
        assert not {a, b} & set(ids(answer.candidates)), (limit, answer.candidates)
        assert len(answer.candidates) == min(limit, catalog - 2)
        assert all("buy_again" not in c.sources for c in answer.candidates)


def test_buy_again_keeps_to_the_filters_for_items_newer_than_the_model(grocer: Shop) -> None:
    """Items bought since training are in none of the model's masks: the catalog decides."""
    new = [
        CatalogItem(item_id="dairy-new", category="dairy"),
        CatalogItem(item_id="dairy-gone", category="dairy", in_stock=False),
        CatalogItem(item_id="bakery-new", category="bakery"),
    ]
    grocer.store.save_catalog(new)
    grocer.retriever.catalog_changed(new)
    grocer.store.apply_events(
        [event("purchase", "regular", grocer.now - timedelta(hours=2), *(i.item_id for i in new))]
    )

    anything = ids(grocer.ask(member_id="regular", limit=10).candidates)
    dairy = ids(grocer.ask(member_id="regular", limit=10, category="dairy").candidates)
    told_off = ids(grocer.ask(member_id="regular", limit=10, exclude=["dairy-new"]).candidates)

    assert {"dairy-new", "bakery-new"} <= set(anything)  # bought lately: buy again has them
    assert "dairy-gone" not in anything  # but not what is sold out
    assert "dairy-new" in dairy
    assert not {"bakery-new", "dairy-gone"} & set(dairy)
    assert {AISLE_OF.get(i, "dairy") for i in dairy} == {"dairy"}
    assert "dairy-new" not in told_off and "bakery-new" in told_off


# --- ALS --------------------------------------------------------------------------------


def test_als_never_proposes_what_the_member_owns_but_does_what_they_only_viewed(
    pairs: Shop,
) -> None:
    model = pairs.retriever.model
    members_with_viewed_items_from_als = 0
    for member in MEMBERS:
        owned, viewed = pairs.owned(member), pairs.viewed(member) - pairs.owned(member)
        activity = pairs.retriever.activity.get(member)
        allowed = np.ones(model.item_count, bool)
        found = sources.als(model, sources.Ask(activity, (), 20, allowed, pairs.now))
        answer = pairs.ask(member_id=member, limit=len(CATEGORY_OF)).candidates

        assert len(found) == 20
        assert not owned & set(found), member
        assert not owned & {c.item_id for c in answer if "als" in c.sources}, member
        # What they own comes back from buy again only (the home page allows repeats).
        assert all(set(c.sources) == {"buy_again"} for c in answer if c.item_id in owned)
        members_with_viewed_items_from_als += bool(viewed & set(found[:10]))
    assert members_with_viewed_items_from_als == len(MEMBERS)


# --- bought together --------------------------------------------------------------------


def test_the_cart_proposes_what_is_bought_with_its_item(pairs: Shop) -> None:
    for x, y in PAIRS:
        # A stranger, and a member of another category (who owns neither).
        other = next(m for m, c in MEMBERS.items() if c != CATEGORY_OF[x])
        for member in ("", other):
            answer = pairs.ask(member_id=member, placement="cart", limit=10, context_items=(x,))

            found = ids(answer.candidates)
            assert found[0] == y, (x, member, answer.candidates[:3])
            assert answer.candidates[0].source == "bought_together"
            assert x not in found
            assert len(found) == 10


# --- filters ----------------------------------------------------------------------------


FILTERED: list[dict[str, Any]] = [
    {"member_id": "m-00"},
    {"member_id": "m-00", "category": "toys"},
    {"member_id": ""},
    {"member_id": "", "category": "toys"},
    {"member_id": "m-02", "placement": "product", "context_items": ("toys-04",)},
    {"member_id": "m-02", "placement": "cart", "context_items": ("toys-04",)},
    {"member_id": "", "placement": "cart", "context_items": ("toys-04",)},
    {"member_id": "m-02", "placement": "email", "category": "books"},
]


def test_a_filtered_request_still_gets_as_many_items_as_it_asks_for(pairs: Shop) -> None:
    sold_out = ["toys-00", "toys-01", "toys-05", "toys-10", "books-04", "books-11"]
    pairs.retriever.catalog_changed(
        [CatalogItem(item_id=i, category=CATEGORY_OF[i], in_stock=False) for i in sold_out]
    )
    exclude = ["toys-02", "toys-07", "toys-13", "books-05", "garden-03"]

    for fields in FILTERED:
        category = fields.get("category", "")
        context = set(fields.get("context_items", ()))
        allowed = {
            i
            for i, c in CATEGORY_OF.items()
            if i not in sold_out
            and i not in exclude
            and i not in context
            and (not category or c == category)
        }
        for limit in (5, len(allowed) - 1, len(allowed), len(allowed) + 5):
            answer = pairs.ask(**fields, limit=limit, exclude=exclude)

            found = ids(answer.candidates)
            assert len(found) == len(set(found)) == min(limit, len(allowed)), (fields, limit)
            assert set(found) <= allowed, (fields, limit, set(found) - allowed)


# --- freshness --------------------------------------------------------------------------


def toy_spree(shop: Shop, member: str) -> list[Event]:
    """A member starts shopping for toys: looks at four, buys a pair."""
    at = shop.now - timedelta(minutes=30)
    looks = ["toys-00", "toys-02", "toys-04", "toys-06"]
    events = [event("view", member, at + timedelta(minutes=n), i) for n, i in enumerate(looks)]
    return [*events, event("purchase", member, at + timedelta(minutes=5), "toys-12", "toys-13")]


def toy_share(answer: Answer) -> float:
    return sum(CATEGORY_OF.get(c.item_id) == "toys" for c in answer.candidates) / len(
        answer.candidates
    )


def test_new_events_show_once_the_retriever_is_told_of_them(pairs: Shop) -> None:
    member = next(m for m, c in MEMBERS.items() if c == "books")
    before = pairs.retriever.for_member(member, 10, [])
    assert toy_share(before) <= 0.1
    pairs.store.apply_events(toy_spree(pairs, member))

    # Stored but not announced: the member's lines in memory are served, unchanged. This
    # is why the consumer must call `members_changed` once it has stored a batch.
    stale = pairs.retriever.for_member(member, 10, [])
    pairs.retriever.members_changed([member])
    fresh = pairs.retriever.for_member(member, 10, [])

    assert stale.candidates == before.candidates
    assert toy_share(fresh) >= 0.3, fresh.candidates
    # Toys they have not touched yet: what goes with the ones they looked at, above all.
    touched = {str(line.item_id) for e in toy_spree(pairs, member) for line in e.lines()}
    assert {c.item_id for c in fresh.candidates if CATEGORY_OF[c.item_id] == "toys"} - touched
    assert pairs.models.current() == before.model_version  # no retraining


def test_the_consumer_tells_the_retriever_of_the_members_it_stored_events_for(
    pairs: Shop, tmp_path: Path
) -> None:
    member = next(m for m, c in MEMBERS.items() if c == "garden")
    assert toy_share(pairs.retriever.for_member(member, 10, [])) <= 0.1
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    try:
        bus.publish(EVENTS_TOPIC, event_records(toy_spree(pairs, member)))
        interaction_worker(bus, pairs.store, SETTINGS, pairs.retriever).drain()
    finally:
        bus.close()

    assert toy_share(pairs.retriever.for_member(member, 10, [])) >= 0.3


# --- new items --------------------------------------------------------------------------


def test_an_item_added_after_training_reaches_the_members_of_its_category(pairs: Shop) -> None:
    new = [
        CatalogItem(item_id="books-new", category="books"),
        CatalogItem(item_id="books-gone", category="books", in_stock=False),
    ]
    pairs.store.save_catalog(new)
    pairs.retriever.catalog_changed(new)
    assert "books-new" not in pairs.retriever.model.position

    for member, category in MEMBERS.items():
        # Content ranks a newcomer as its category's median, so the member's established
        # items (which several sources propose) come first: a few dozen candidates, as
        # ranking asks for, hold it.
        answer = pairs.retriever.for_member(member, 30, [])

        found = {c.item_id: c for c in answer.candidates}
        assert "books-gone" not in found
        if category == "books":
            assert "books-new" in found, member
            assert found["books-new"].sources.keys() == {"content"}
            assert found["books-new"].source == "content"
            assert found["books-new"].category == "books"
        elif not any(CATEGORY_OF[i] == "books" for i in pairs.viewed(member)):
            # Nothing of theirs is a book: not even the whole catalog holds it.
            whole = pairs.retriever.for_member(member, len(CATEGORY_OF) + 2, [])
            assert "books-new" not in ids(whole.candidates), member


# --- model versions ---------------------------------------------------------------------


def republish(shop: Shop) -> str:
    """A new version with the served one's files (what training would write, faster)."""
    served = shop.models.path(shop.retriever.model.version)

    def copy(folder: Path) -> dict[str, Any]:
        for path in served.iterdir():
            if path.name != "meta.json":
                shutil.copy2(path, folder / path.name)
        meta: dict[str, Any] = json.loads((served / "meta.json").read_text())
        return meta

    return shop.models.publish(copy)


def truncate_items(folder: Path) -> None:
    path = folder / ITEMS_FILE
    path.write_bytes(path.read_bytes()[:40])


def delete_ip_index(folder: Path) -> None:
    (folder / IP_INDEX_FILE).unlink()


def delete_cosine_index(folder: Path) -> None:
    (folder / COSINE_INDEX_FILE).unlink()


def test_a_corrupt_version_is_refused_and_the_last_one_keeps_serving(pairs: Shop) -> None:
    served = pairs.retriever.model.version
    before = pairs.retriever.for_member("m-00", 10, [])
    for damage in (truncate_items, delete_ip_index, delete_cosine_index):
        broken = republish(pairs)
        damage(pairs.models.path(broken))
        pairs.models.activate(broken)  # CURRENT names it (publishing did too)
        assert pairs.models.current() == broken

        assert pairs.retriever.reload() is False, damage

        assert pairs.models.refused().get(broken), damage
        assert pairs.retriever.model.version == served
        after = pairs.retriever.for_member("m-00", 10, [])
        assert after.model_version == served
        assert after.candidates == before.candidates
        assert pairs.retriever.reload() is False  # refused once, not tried again and again
        assert pairs.retriever.model.version == served

    # Repaired and made current again by an operator (which clears the refusal): served.
    for path in pairs.models.path(served).iterdir():
        if path.name != "meta.json":
            shutil.copy2(path, pairs.models.path(broken) / path.name)
    pairs.models.activate(broken)
    assert broken not in pairs.models.refused()
    assert pairs.retriever.reload() is True
    assert pairs.retriever.model.version == broken
    # A sound version published later is taken.
    sound = republish(pairs)
    assert pairs.retriever.reload() is True
    assert pairs.retriever.for_member("m-00", 10, []).model_version == sound


# --- calibration ------------------------------------------------------------------------


def rank_one(shop: Shop, source: str) -> float:
    return shop.retriever.model.parts.calibration.probability(source, 1)


def test_calibration_trusts_buy_again_where_members_rebuy(grocer: Shop) -> None:
    assert rank_one(grocer, "buy_again") > rank_one(grocer, "als")


def test_calibration_distrusts_buy_again_where_nobody_rebuys(pairs: Shop) -> None:
    assert rank_one(pairs, "buy_again") < rank_one(pairs, "als")


def non_decreasing(values: Sequence[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def test_a_fitted_strength_curve_never_falls_and_is_read_by_strength() -> None:
    # Held-out proposals whose chance of being bought again grows with how often (decayed)
    # the member bought them, as a grocer's staples do.
    rng = np.random.default_rng(5)
    strengths = rng.uniform(0.5, 6.0, 6000)
    hits = rng.random(6000) < strengths / 10

    points, chances = fit_strengths(strengths, hits)

    assert points == sorted(points)
    assert non_decreasing(chances), chances
    assert all(0 < p <= 1 for p in chances)
    calibration = Calibration(
        {"buy_again": [0.3, 0.2]}, by_strength={"buy_again": (points, chances)}
    )
    read = [calibration.probability("buy_again", 1, s) for s in (1.0, 3.0, 5.0)]
    assert read == pytest.approx([0.1, 0.3, 0.5], abs=0.05)
    # Past the measured strengths it holds its ends; the rank does not matter.
    assert calibration.probability("buy_again", 7, 100.0) == chances[-1]
    assert calibration.probability("buy_again", 1, 0.01) == chances[0]
    # Without a strength (or for another source) it is read by rank, as before.
    assert calibration.probability("buy_again", 2) == 0.2


def test_read_by_strength_a_staple_outranks_a_popular_item_and_a_one_off_does_not() -> None:
    calibration = Calibration(
        {"buy_again": [0.3, 0.3], "trending": [0.2]},
        by_strength={"buy_again": ([1.0, 10.0], [0.05, 0.5])},
    )
    proposals = {"buy_again": ["staple", "once"], "trending": ["hit"]}
    weights = {"buy_again": 1.0, "trending": 1.0}
    strengths = {"buy_again": {"staple": 10.0, "once": 1.0}}

    assert ids_of(fuse(proposals, calibration, weights, strengths)) == ["staple", "hit", "once"]
    # Read by rank, both of the member's own items come first.
    assert ids_of(fuse(proposals, calibration, weights)) == ["staple", "once", "hit"]


def test_a_calibration_survives_its_file_and_an_older_file_still_loads() -> None:
    calibration = Calibration(
        {"als": [0.3, 0.2]}, 12, by_strength={"buy_again": ([1.0, 4.0], [0.1, 0.4])}
    )

    again = Calibration.from_json(json.loads(json.dumps(calibration.to_json())))

    assert again == calibration
    # A model trained before strengths were measured is read by rank.
    older = Calibration.from_json({"by_source": {"als": [0.3]}, "measured_on": 3})
    assert older.by_strength == {}
    assert older.probability("buy_again", 1, 5.0) == older.probability("buy_again", 1)


def assert_reads_buy_again_as_training_chose(shop: Shop) -> str:
    model = shop.retriever.model
    held_out = model.meta["metrics"]["holdout"]
    read_by = held_out["buy_again_read_by"]
    assert ("buy_again" in model.parts.calibration.by_strength) == (read_by == "strength")
    if read_by == "strength":
        assert held_out["ndcg@10"] > held_out["ndcg@10 by rank"]
    return str(read_by)


def test_training_says_how_buy_again_is_read_and_serving_reads_it_so(grocer: Shop) -> None:
    assert assert_reads_buy_again_as_training_chose(grocer) in {"rank", "strength"}


def test_where_nobody_rebuys_buy_again_is_read_by_rank(pairs: Shop) -> None:
    # Strength tells nothing there that rank does not.
    assert assert_reads_buy_again_as_training_chose(pairs) == "rank"


def test_the_best_few_fused_are_the_head_of_all_fused_in_the_same_order() -> None:
    rng = random.Random(11)
    calibration = Calibration(
        {"als": [0.3, 0.2, 0.2, 0.1], "trending": [0.2, 0.2]},
        by_strength={"buy_again": ([1.0, 5.0], [0.02, 0.4])},
    )
    items = [f"i-{n}" for n in range(60)]
    proposals = {source: rng.sample(items, 40) for source in ("als", "trending", "buy_again")}
    strengths = {"buy_again": {i: rng.choice([1.0, 2.0, 5.0]) for i in proposals["buy_again"]}}
    weights = {"als": 1.0, "trending": 0.5, "buy_again": 1.0}

    everything = fuse(proposals, calibration, weights, strengths)

    assert len(everything) == len({i for found in proposals.values() for i in found})
    for limit in (1, 10, 25, 100):
        head = fuse(proposals, calibration, weights, strengths, limit)
        assert head == everything[:limit]
    # Ranks read a list at a time give what `probability` gives one rank at a time.
    for source in ("als", "trending", "never-measured"):
        listed = calibration.chances(source, 30)
        assert listed.tolist() == pytest.approx(
            [calibration.probability(source, r) for r in range(1, 30 + 1)]
        )
