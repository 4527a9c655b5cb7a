"""Retrieval on a small synthetic shop: candidates, fold-in, fallbacks, training and reload.

The shop has three categories of 15 items and 60 members, each of whom views 12 items of
one category and one stray item of another, so a working model must recommend along
those lines. The sources one by one, and how they are fused, are in
tests/unit/test_retrieval_sources.py.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from implicit.cpu.als import AlternatingLeastSquares
from sqlalchemy import Engine

from services.common.candidates import Candidate
from services.common.events import CatalogItem, Event
from services.retrieval import model as model_module
from services.retrieval import sources
from services.retrieval.domain import CandidateRequest, Retriever
from services.retrieval.model import ALS_FILE, RetrievalModel
from services.retrieval.model_store import LocalModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train
from tests import interactions as stored

CATEGORIES = ("books", "garden", "toys")
ITEMS = {cat: [f"{cat}-{n:02d}" for n in range(15)] for cat in CATEGORIES}
CATEGORY_OF = {item: cat for cat, items in ITEMS.items() for item in items}
MEMBERS = {f"m-{n:02d}": CATEGORIES[n % 3] for n in range(60)}
START = datetime(2026, 3, 1, tzinfo=UTC)
# The default regularization (10) suits shops of thousands of members: on 60 it shrinks
# every item factor to nearly nothing, and ALS (calibrated as no better than trending)
# would take no part in what these tests look at.
SETTINGS = RetrievalSettings(factors=16, iterations=10, regularization=1.0)
HOME: set[str] = set(SETTINGS.placements["home"].sources)
PRODUCT: set[str] = set(SETTINGS.placements["product"].sources)


def event(type_: str, member: str, item: str, n: int, **fields: object) -> Event:
    return Event.model_validate(
        {
            "event_id": f"{member}-{type_}-{item}-{n}",
            "type": type_,
            "member_id": member,
            "item_id": item,
            "timestamp": START + timedelta(minutes=n),
            **fields,
        }
    )


def shop_events() -> list[Event]:
    rng = random.Random(11)
    events: list[Event] = []
    n = 0
    for member, category in MEMBERS.items():
        for item in rng.sample(ITEMS[category], 12):
            events.append(event("view", member, item, n := n + 1))
        stray = rng.choice([c for c in CATEGORIES if c != category])
        events.append(event("view", member, rng.choice(ITEMS[stray]), n := n + 1))
    return events


@dataclass
class Shop:
    store: SqlInteractionStore
    models: LocalModelStore
    retriever: Retriever
    events: list[Event]


@pytest.fixture
def store(engine: Engine) -> SqlInteractionStore:
    """On SQLite and on PostgreSQL (see conftest.py); closed with the engine."""
    return SqlInteractionStore(engine, SETTINGS.event_weights)


@pytest.fixture
def shop(store: SqlInteractionStore, tmp_path: Path) -> Shop:
    events = shop_events()
    store.apply_events(events)
    store.save_catalog(
        [CatalogItem(item_id=item, category=cat) for item, cat in CATEGORY_OF.items()]
    )
    models = LocalModelStore(tmp_path / "models")
    outcome = train(store, models, SETTINGS)
    assert outcome.trained
    retriever = Retriever(store, models, SETTINGS)
    assert retriever.reload()
    return Shop(store, models, retriever, events)


def share_in(category: str, item_ids: list[str]) -> float:
    return sum(CATEGORY_OF.get(i) == category for i in item_ids) / len(item_ids)


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.item_id for c in candidates]


def assert_fused(candidate: Candidate, allowed_sources: set[str]) -> None:
    """What every fused candidate says of itself: which sources proposed it, each with a
    chance, the one that argued most named as its source, and a score of at least that."""
    assert candidate.sources, candidate
    assert set(candidate.sources) <= allowed_sources, candidate
    assert all(0 < p <= 1 for p in candidate.sources.values()), candidate
    assert candidate.sources[candidate.source] == max(candidate.sources.values()), candidate
    assert candidate.score >= max(candidate.sources.values()) - 1e-6, candidate


def test_candidates_lean_to_the_members_category(shop: Shop) -> None:
    shares = []
    by_source: Counter[str] = Counter()
    for member, category in MEMBERS.items():
        answer = shop.retriever.for_member(member, 10, [])
        assert answer.personalized
        assert answer.model_version == shop.models.current()
        assert len(answer.candidates) == 10
        assert len(set(ids(answer.candidates))) == 10
        shares.append(share_in(category, ids(answer.candidates)))
        for c in answer.candidates:
            assert_fused(c, HOME)
            # These members only looked: they own nothing that could be bought again.
            assert "buy_again" not in c.sources
            assert c.category == CATEGORY_OF[c.item_id]
            by_source.update(c.sources)
    assert min(shares) > 0.5, shares
    assert sum(shares) / len(shares) >= 0.8
    # The member's own signal is in: ALS and the seeded sources propose, not only trending.
    assert by_source["als"] > 0 and by_source["bought_together"] > 0, by_source


def test_candidates_are_ordered_by_score(shop: Shop) -> None:
    scores = [c.score for c in shop.retriever.for_member("m-00", 10, []).candidates]

    assert scores == sorted(scores, reverse=True)


def test_a_new_member_is_folded_in_without_retraining(shop: Shop) -> None:
    version = shop.models.current()
    views = [
        event("view", "newcomer", item, 1000 + n) for n, item in enumerate(ITEMS["garden"][:4])
    ]
    shop.store.apply_events(views)

    answer = shop.retriever.for_member("newcomer", 10, [])

    assert answer.personalized
    assert share_in("garden", ids(answer.candidates)) >= 0.7
    assert any("als" in c.sources for c in answer.candidates)
    assert shop.models.current() == version


def test_a_members_new_taste_shows_without_retraining(shop: Shop) -> None:
    member = next(m for m, c in MEMBERS.items() if c == "books")
    before = ids(shop.retriever.for_member(member, 10, []).candidates)
    toys = ITEMS["toys"][:6]
    shop.store.apply_events(
        [event("purchase", member, item, 2000 + n, revenue=1) for n, item in enumerate(toys)]
    )
    shop.retriever.members_changed([member])  # as the consumer does once the batch is stored

    after = shop.retriever.for_member(member, 10, []).candidates

    # The member now likes books and toys: both show.
    assert share_in("toys", before) <= 0.2
    assert share_in("toys", ids(after)) >= 0.3
    assert share_in("books", ids(after)) > 0
    # What they bought comes back only as "buy again", never as ALS's discovery.
    for c in after:
        if c.item_id in toys:
            assert "als" not in c.sources and "buy_again" in c.sources, c


def trending_figures(events: list[Event]) -> dict[str, float]:
    """Each item's interactions, each halved per `trending_days` of age at the last one."""
    last = max(e.timestamp for e in events)
    figures: Counter[str] = Counter()
    for e in events:
        age_days = (last - e.timestamp) / timedelta(days=1)
        figures[str(e.item_id)] += 0.5 ** (age_days / SETTINGS.trending_days)
    return dict(figures)


def test_an_unknown_member_gets_trending_items(shop: Shop) -> None:
    figures = trending_figures(shop.events)

    answer = shop.retriever.for_member("nobody", 10, [])

    assert not answer.personalized
    assert len(answer.candidates) == 10
    assert all(c.source == "trending" and set(c.sources) == {"trending"} for c in answer.candidates)
    given = ids(answer.candidates)
    shown = [figures[i] for i in given]
    assert shown == pytest.approx(sorted(shown, reverse=True), rel=1e-5)
    # Nothing left out is more trending than the last one given.
    assert all(f <= shown[-1] * (1 + 1e-5) for i, f in figures.items() if i not in given)
    assert max(c.popularity for c in answer.candidates) == 1.0  # the most reached item is in


def test_what_the_sources_cannot_fill_is_padded_with_popular_items(shop: Shop) -> None:
    reach = Counter(item for _, item in {(e.member_id, e.item_id) for e in shop.events})
    # The cart placement's sources are all seeded by the member or the cart: with neither
    # known, none proposes anything.
    request = CandidateRequest(placement="cart", limit=5, context_items=("not-a-sku",))

    answer = shop.retriever.candidates(request)

    assert not answer.personalized
    assert len(answer.candidates) == 5
    assert all(c.source == "popular" for c in answer.candidates)
    given = ids(answer.candidates)
    assert [reach[i] for i in given] == sorted((reach[i] for i in given), reverse=True)
    assert all(reach[i] <= reach[given[-1]] for i in reach if i not in given)
    scores = [c.score for c in answer.candidates]
    assert scores == sorted(scores, reverse=True)


def test_a_member_whose_items_are_all_unknown_to_the_model_gets_what_a_stranger_gets(
    shop: Shop,
) -> None:
    shop.store.apply_events([event("view", "early-bird", "brand-new-sku", 5000)])

    answer = shop.retriever.for_member("early-bird", 5, [])

    # No source can place an item the model never saw and the catalog does not know.
    assert ids(answer.candidates) == ids(shop.retriever.for_member("nobody", 5, []).candidates)
    assert all(c.source == "trending" for c in answer.candidates)
    # The flag says the member has activity, not that it shaped this answer.
    assert answer.personalized


def test_a_member_whose_items_are_unknown_to_the_model_gets_their_category(shop: Shop) -> None:
    new = [CatalogItem(item_id=f"garden-new-{n}", category="garden") for n in range(2)]
    shop.store.save_catalog(new)
    shop.retriever.catalog_changed(new)  # as the consumer does
    shop.store.apply_events(
        [event("view", "early-bird", item.item_id, 5000 + n) for n, item in enumerate(new)]
    )

    answer = shop.retriever.for_member("early-bird", 5, [])

    assert answer.personalized
    assert len(answer.candidates) == 5
    assert {c.category for c in answer.candidates} == {"garden"}
    assert all("content" in c.sources for c in answer.candidates)


def test_excluded_items_never_appear(shop: Shop) -> None:
    first = ids(shop.retriever.for_member("m-01", 10, []).candidates)
    popular = ids(shop.retriever.popular(10, [], None).candidates)
    banned = first[:6] + popular[:3]

    again = ids(shop.retriever.for_member("m-01", 10, banned).candidates)
    popular_again = ids(shop.retriever.for_member("nobody", 10, banned).candidates)
    similar = ids(shop.retriever.similar(first[0], 10, banned).candidates)

    assert len(again) == 10
    assert not set(again) & set(banned)
    assert len(popular_again) == 10
    assert not set(popular_again) & set(banned)
    assert len(similar) == 10
    assert not set(similar) & set(banned)
    # Excluding items only makes room (every source's later items move up): what was
    # given and not excluded is given still.
    assert set(first) - set(banned) <= set(again)


def test_similar_items_share_the_category_and_exclude_the_item(shop: Shop) -> None:
    shares = []
    for item, category in CATEGORY_OF.items():
        answer = shop.retriever.similar(item, 10, [])

        found = ids(answer.candidates)
        assert answer.personalized
        assert item not in found
        assert len(set(found)) == 10
        for c in answer.candidates:
            # No member: the product page's item-seeded sources only, never ALS.
            assert_fused(c, PRODUCT - {"als"})
        assert any("similar" in c.sources for c in answer.candidates)
        shares.append(share_in(category, found))
    assert min(shares) > 0.5, shares
    assert sum(shares) / len(shares) >= 0.8


def test_similar_for_an_unseen_item_is_popular_in_its_category(shop: Shop) -> None:
    new = CatalogItem(item_id="garden-new", category="garden")
    shop.store.save_catalog([new])
    shop.retriever.catalog_changed([new])  # as the consumer does

    answer = shop.retriever.similar("garden-new", 5, [])

    assert not answer.personalized
    assert len(answer.candidates) == 5
    assert {CATEGORY_OF[i] for i in ids(answer.candidates)} == {"garden"}
    assert all(c.source == "popular" for c in answer.candidates)


def test_popular_in_a_category(shop: Shop) -> None:
    answer = shop.retriever.popular(20, [], "toys")

    assert len(answer.candidates) == 15  # every toy, and nothing else
    assert {CATEGORY_OF[i] for i in ids(answer.candidates)} == {"toys"}


def test_training_on_unchanged_data_publishes_nothing_new(shop: Shop) -> None:
    version = shop.models.current()
    assert version is not None

    again = train(shop.store, shop.models, SETTINGS)

    assert not again.trained
    assert again.version == version
    assert shop.models.current() == version


def test_forced_training_publishes_a_new_version(shop: Shop) -> None:
    version = shop.models.current()

    forced = train(shop.store, shop.models, SETTINGS, force=True)

    assert forced.trained
    assert forced.version != version
    assert shop.models.current() == forced.version
    assert forced.meta["members"] == 60
    assert forced.meta["items"] == 45


def test_new_data_or_a_new_recipe_trains_again(shop: Shop) -> None:
    version = shop.models.current()
    shop.store.apply_events([event("view", "m-00", "toys-00", 9000)])

    after_data = train(shop.store, shop.models, SETTINGS)
    after_recipe = train(shop.store, shop.models, SETTINGS.model_copy(update={"factors": 8}))

    assert after_data.trained
    assert after_data.version != version
    assert after_recipe.trained
    assert after_recipe.version != after_data.version


def test_reload_picks_up_a_newer_version(shop: Shop) -> None:
    old = shop.retriever.model.version
    assert not shop.retriever.reload()  # nothing newer yet

    newer = train(shop.store, shop.models, SETTINGS, force=True).version

    assert shop.retriever.for_member("m-00", 5, []).model_version == old
    assert shop.retriever.reload()
    assert shop.retriever.model.version == newer
    assert shop.retriever.for_member("m-00", 5, []).model_version == newer
    assert not shop.retriever.reload()


def test_the_same_event_twice_is_recorded_once(store: SqlInteractionStore) -> None:
    purchase = event("purchase", "m-1", "a", 1, revenue=3)
    view = event("view", "m-1", "b", 2)

    assert store.apply_events([purchase, view, purchase]) == 2
    fingerprint = store.fingerprint()
    history = stored.history(store, "m-1", 100)

    assert store.apply_events([purchase]) == 0
    assert store.apply_events([view, purchase]) == 0
    assert store.fingerprint() == fingerprint
    # Weights are relative to a purchase: a view says a tenth as much.
    assert stored.history(store, "m-1", 100) == history == pytest.approx({"a": 1.0, "b": 0.1})
    assert sorted((i.member_id, i.item_id, i.weight) for i in stored.interactions(store)) == [
        ("m-1", "a", pytest.approx(1.0)),
        ("m-1", "b", pytest.approx(0.1)),
    ]
    assert [(a.item_id, a.event_type) for a in store.member_activity("m-1", 100)] == [
        ("b", "view"),
        ("a", "purchase"),
    ]


def test_new_interactions_change_the_fingerprint(store: SqlInteractionStore) -> None:
    store.apply_events([event("view", "m-1", "a", 1)])
    before = store.fingerprint()

    store.apply_events([event("view", "m-1", "a", 2)])

    assert store.fingerprint() != before
    assert stored.history(store, "m-1", 100) == pytest.approx({"a": 0.2})


def test_events_that_say_nothing_about_taste_are_not_interactions(
    store: SqlInteractionStore,
) -> None:
    store.apply_events(
        [
            event("impression", "m-1", "a", 1),
            event("remove_from_cart", "m-1", "a", 2),
            Event(type="search", member_id="m-1", query="lamp"),  # type: ignore[arg-type]
        ]
    )

    assert stored.history(store, "m-1", 100) == {}
    assert store.member_activity("m-1", 100) == []
    assert list(stored.interactions(store)) == []


def test_model_files_hold_no_member_data(store: SqlInteractionStore, tmp_path: Path) -> None:
    renamed = {m: f"member-{m}-q7z" for m in MEMBERS}
    store.apply_events(
        [e.model_copy(update={"member_id": renamed[e.member_id]}) for e in shop_events()]
    )
    models = LocalModelStore(tmp_path / "models")

    version = train(store, models, SETTINGS).version

    folder = models.path(version)
    assert models.meta(version)["holds_member_data"] is False
    with np.load(folder / ALS_FILE) as saved:
        assert "user_factors" not in saved.files
        assert all(saved[key].shape[0] != len(MEMBERS) for key in saved.files if saved[key].ndim)
    content = b"".join(
        path.read_bytes() for path in (tmp_path / "models").rglob("*") if path.is_file()
    )
    assert not [m for m in renamed.values() if m.encode() in content]


def test_recommendations_are_the_same_without_the_user_factors(
    store: SqlInteractionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply_events(shop_events())
    fitted: list[AlternatingLeastSquares] = []
    saving = model_module.save_item_side

    def keep(als: AlternatingLeastSquares, path: Path) -> None:
        fitted.append(als)
        saving(als, path)

    monkeypatch.setattr(model_module, "save_item_side", keep)
    models = LocalModelStore(tmp_path / "models")
    version = train(store, models, SETTINGS).version
    # The same model as implicit saves it whole, user factors and all.
    whole = tmp_path / "whole"
    shutil.copytree(models.path(version), whole)
    (trained,) = fitted
    trained.save(str(whole / ALS_FILE))
    assert trained.user_factors is not None

    served, before = RetrievalModel.load(models.path(version)), RetrievalModel.load(whole)

    now = START + timedelta(days=1)
    for member in MEMBERS:
        activity = store.member_activity(member, SETTINGS.history_limit)
        ask = sources.Ask(activity, (), 10, np.ones(served.item_count, bool), now)
        assert sources.als(served, ask) == sources.als(before, ask)


def test_a_member_folded_in_from_their_lines_gets_the_factors_training_fitted(
    store: SqlInteractionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Views and purchases mixed, so that the weights' scale and the confidence transform
    # would show if serving and training disagreed on them.
    events = shop_events()
    events += [
        event("purchase", e.member_id, str(e.item_id), 3000 + n, revenue=1)
        for n, e in enumerate(events[::4])
    ]
    store.apply_events(events)
    fitted: list[AlternatingLeastSquares] = []
    saving = model_module.save_item_side

    def keep(als: AlternatingLeastSquares, path: Path) -> None:
        fitted.append(als)
        saving(als, path)

    monkeypatch.setattr(model_module, "save_item_side", keep)
    models = LocalModelStore(tmp_path / "models")
    served = RetrievalModel.load(models.path(train(store, models, SETTINGS).version))
    (trained,) = fitted
    members = list(dict.fromkeys(row.member_id for row in store.training_rows()))

    for row, member in enumerate(members):
        summed: dict[int, float] = {}
        for line in store.member_activity(member, SETTINGS.history_limit):
            position = served.position[line.item_id]
            summed[position] = summed.get(position, 0.0) + line.weight
        folded = served.fold_in(summed)
        fitted_factors = np.asarray(trained.user_factors[row])
        cosine = folded @ fitted_factors / np.linalg.norm(folded) / np.linalg.norm(fitted_factors)
        assert cosine > 0.99, (member, cosine)
