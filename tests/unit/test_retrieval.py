"""Retrieval on a small synthetic shop: candidates, fold-in, fallbacks, training and reload.

The shop has three categories of 15 items and 60 members, each of whom views 12 items of
one category and one stray item of another, so a working model must recommend along
those lines.
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
from services.retrieval import training
from services.retrieval.domain import Retriever
from services.retrieval.model import ALS_FILE, RetrievalModel
from services.retrieval.model_store import LocalModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train

CATEGORIES = ("books", "garden", "toys")
ITEMS = {cat: [f"{cat}-{n:02d}" for n in range(15)] for cat in CATEGORIES}
CATEGORY_OF = {item: cat for cat, items in ITEMS.items() for item in items}
MEMBERS = {f"m-{n:02d}": CATEGORIES[n % 3] for n in range(60)}
START = datetime(2026, 3, 1, tzinfo=UTC)
SETTINGS = RetrievalSettings(factors=16, iterations=10)


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
    retriever = Retriever(store, models, SETTINGS.history_limit)
    assert retriever.reload()
    return Shop(store, models, retriever, events)


def share_in(category: str, item_ids: list[str]) -> float:
    return sum(CATEGORY_OF.get(i) == category for i in item_ids) / len(item_ids)


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.item_id for c in candidates]


def test_candidates_lean_to_the_members_category(shop: Shop) -> None:
    shares = []
    for member, category in MEMBERS.items():
        answer = shop.retriever.for_member(member, 10, [])
        assert answer.personalized
        assert answer.model_version == shop.models.current()
        assert len(answer.candidates) == 10
        assert len(set(ids(answer.candidates))) == 10
        shares.append(share_in(category, ids(answer.candidates)))
        assert all(c.source == "als" for c in answer.candidates)
        assert all(c.category == CATEGORY_OF[c.item_id] for c in answer.candidates)
    assert min(shares) > 0.5, shares
    assert sum(shares) / len(shares) >= 0.8


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
    assert shop.models.current() == version


def test_a_members_new_taste_shows_without_retraining(shop: Shop) -> None:
    member = next(m for m, c in MEMBERS.items() if c == "books")
    before = ids(shop.retriever.for_member(member, 10, []).candidates)
    toys = ITEMS["toys"]
    shop.store.apply_events(
        [event("purchase", member, item, 2000 + n, revenue=1) for n, item in enumerate(toys[:6])]
    )

    after = ids(shop.retriever.for_member(member, 10, []).candidates)

    # The member now likes books and toys: both show.
    assert share_in("toys", before) <= 0.2
    assert share_in("toys", after) >= 0.3


def test_an_unknown_member_gets_popular_items(shop: Shop) -> None:
    reach = Counter(item for _, item in {(e.member_id, e.item_id) for e in shop.events})

    answer = shop.retriever.for_member("nobody", 10, [])

    assert not answer.personalized
    assert len(answer.candidates) == 10
    assert all(c.source == "popular" for c in answer.candidates)
    popularity = [c.popularity for c in answer.candidates]
    assert popularity == sorted(popularity, reverse=True)
    top = max(reach.values())
    assert answer.candidates[0].item_id in {i for i, r in reach.items() if r == top}
    assert popularity[0] == 1.0
    # No item left out ranks above the last one given.
    given = ids(answer.candidates)
    assert all(reach[i] <= reach[given[-1]] for i in reach if i not in given)


def test_a_member_whose_items_are_all_unknown_to_the_model_gets_popular_items(
    shop: Shop,
) -> None:
    shop.store.apply_events([event("view", "early-bird", "brand-new-sku", 5000)])

    answer = shop.retriever.for_member("early-bird", 5, [])

    assert not answer.personalized
    assert len(answer.candidates) == 5


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
    assert not set(similar) & set(banned)
    # What was not excluded keeps its place in the order.
    assert [i for i in first if i not in banned] == again[: len(set(first) - set(banned))]


def test_similar_items_share_the_category_and_exclude_the_item(shop: Shop) -> None:
    shares = []
    for item, category in CATEGORY_OF.items():
        answer = shop.retriever.similar(item, 10, [])

        found = ids(answer.candidates)
        assert answer.personalized
        assert item not in found
        assert len(set(found)) == 10
        assert all(c.source == "similar" for c in answer.candidates)
        shares.append(share_in(category, found))
    assert min(shares) > 0.5, shares
    assert sum(shares) / len(shares) >= 0.8


def test_similar_for_an_unseen_item_is_popular_in_its_category(shop: Shop) -> None:
    shop.store.save_catalog([CatalogItem(item_id="garden-new", category="garden")])

    answer = shop.retriever.similar("garden-new", 5, [])

    assert not answer.personalized
    assert len(answer.candidates) == 5
    assert {CATEGORY_OF[i] for i in ids(answer.candidates)} == {"garden"}


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
    after_recipe = train(shop.store, shop.models, RetrievalSettings(factors=8, iterations=10))

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
    history = store.member_history("m-1", 100)

    assert store.apply_events([purchase]) == 0
    assert store.apply_events([view, purchase]) == 0
    assert store.fingerprint() == fingerprint
    assert store.member_history("m-1", 100) == history == {"a": 10.0, "b": 1.0}
    assert sorted((i.member_id, i.item_id, i.weight) for i in store.interactions()) == [
        ("m-1", "a", 10.0),
        ("m-1", "b", 1.0),
    ]


def test_new_interactions_change_the_fingerprint(store: SqlInteractionStore) -> None:
    store.apply_events([event("view", "m-1", "a", 1)])
    before = store.fingerprint()

    store.apply_events([event("view", "m-1", "a", 2)])

    assert store.fingerprint() != before
    assert store.member_history("m-1", 100) == {"a": 2.0}


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

    assert store.member_history("m-1", 100) == {}
    assert list(store.interactions()) == []


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
    saving = training.save_item_side

    def keep(als: AlternatingLeastSquares, path: Path) -> None:
        fitted.append(als)
        saving(als, path)

    monkeypatch.setattr(training, "save_item_side", keep)
    models = LocalModelStore(tmp_path / "models")
    version = train(store, models, SETTINGS).version
    # The same model as implicit saves it whole, user factors and all.
    whole = tmp_path / "whole"
    shutil.copytree(models.path(version), whole)
    fitted[0].save(str(whole / ALS_FILE))
    assert fitted[0].user_factors is not None

    served, before = RetrievalModel.load(models.path(version)), RetrievalModel.load(whole)

    for member in MEMBERS:
        history = store.member_history(member, SETTINGS.history_limit)
        assert served.for_member(history, 10, set()) == before.for_member(history, 10, set())
