"""The fleet's own models in an evaluation, through the code the services run.

`served` is what the retrieval service answers: the train interactions are converted to
native events (`interactions_to_events`) and written into a real interaction store,
`recofleet train`'s training publishes a model into a model store, and the service's
`Retriever` is asked for each member's candidates for a placement (home by default),
exactly as a gRPC request would ask it. It asks as the gateway does, for
CANDIDATE_FACTOR times the items shown, and `served` shows the first of them in
retrieval's order: what the gateway shows when no ranker answers.
`als` is the same model's ALS source alone: members folded in from their interactions
and searched in the FAISS index, nothing else mixed in.

`served-blend` and `served-ltr` re-rank the very candidates `served` got (asked once per
member and exclusion, shared through the `ServedModel`), so the three differ only in
their order: the ranking service's `BlendRanker` with its default weights, and an `ltr`
model that `train_ltr` trains on the train part's events. Both see each member as the
ranking service would at the split's instant (`Split.as_of`): the profiles code replayed
over the train events (`MembersAsOf`), never a test event.
"""

from __future__ import annotations

import abc
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.candidates import Candidate
from services.common.events import MAX_AMOUNT, CatalogItem, Event, EventItem, EventType
from services.evaluation.baselines import Exclude, Model
from services.evaluation.data import Dataset, Interaction, by_time
from services.retrieval import sources
from services.retrieval.domain import CandidateRequest, Retriever
from services.retrieval.model_store import LocalModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import InteractionStore, SqlInteractionStore
from services.retrieval.training import train

if TYPE_CHECKING:
    from services.ranking.ltr import LtrRanker
    from services.ranking.rankers import MemberContext

BATCH = 5_000
TYPES = {t.value for t in EventType}
# The gateway's `candidate_factor` default: candidates asked of retrieval per item shown,
# the ones the ranker orders.
CANDIDATE_FACTOR = 4
MAX_LINES = 1_000  # lines one native event may hold
MAX_QUANTITY = 100_000
ORDER_TYPES = frozenset({EventType.PURCHASE, EventType.REFUND})


class FleetModel(Model):
    """Trains the fleet's retrieval model on the train interactions, in a scratch folder."""

    def __init__(self, settings: RetrievalSettings | None = None, placement: str = "home") -> None:
        self.settings = settings or RetrievalSettings()
        self.placement = placement
        self._folder: Path | None = None
        self._retriever: Retriever | None = None
        self._store: SqlInteractionStore | None = None
        self.meta: dict[str, object] = {}
        self.as_of: datetime | None = None
        self.prices: Mapping[str, float] = {}
        # The train part as native events, as written into the store.
        self.train_events: list[Event] = []

    def prepare(self, as_of: datetime, prices: Mapping[str, float]) -> None:
        self.as_of, self.prices = as_of, prices

    def load_store(
        self, train_rows: Sequence[Interaction], categories: Mapping[str, str]
    ) -> SqlInteractionStore:
        """A scratch interaction store holding the train rows as native events, written
        through the consumer's path (`apply_events`)."""
        self.close()
        self._folder = Path(tempfile.mkdtemp(prefix="recofleet-evaluate-"))
        store = SqlInteractionStore.from_url(
            f"sqlite:///{self._folder / 'retrieval.db'}", self.settings.event_weights
        )
        store.save_catalog([CatalogItem(item_id=i, category=c) for i, c in categories.items()])
        self.train_events = interactions_to_events(train_rows, categories, self.prices)
        for batch in _batches(iter(self.train_events), BATCH):
            store.apply_events(batch)
        self._store = store
        return store

    def fit(self, train_rows: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        store = self.load_store(train_rows, categories)
        assert self._folder is not None
        models = LocalModelStore(self._folder / "models", keep=1)
        self.meta = train(store, models, self.settings, force=True).meta
        # Recency (buy again's decay) is measured from the end of the train data, where
        # the test period starts, as a live shop measures it from now.
        end = max((r.at for r in train_rows), default=datetime.now(UTC))
        self._retriever = Retriever(store, models, self.settings, lambda: end)
        self._retriever.reload()

    def params(self) -> dict[str, object]:
        fields = ("factors", "iterations", "regularization", "alpha", "confidence")
        chosen: dict[str, object] = {f: getattr(self.settings, f) for f in fields}
        chosen["event_weights"] = self.settings.event_weights
        if self.name == "served":
            chosen["placement"] = self.placement
            chosen["calibration"] = self.meta.get("calibration", {})
            chosen["calibration_by_strength"] = self.meta.get("calibration_by_strength", {})
            chosen["buy_again_half_life_days"] = self.meta.get("buy_again_half_life_days")
            chosen["holdout"] = self.meta.get("metrics", {})
        return chosen

    def curves(self) -> dict[str, list[float]]:
        loss = self.meta.get("training_loss")
        return {"ALS training loss by iteration": list(loss)} if isinstance(loss, list) else {}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self) -> None:
        self.close()

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            raise RuntimeError(f"{self.name}: fit it first")
        return self._retriever


class ServedModel(FleetModel):
    """The retrieval service's candidates in retrieval's order, the first k shown.

    The candidates of a member and an exclusion are asked once and kept: `served-blend`
    and `served-ltr` re-rank these same lists (`candidates`), and fitting again on the
    same train part changes nothing, so that whichever of them is fitted first trains.
    """

    name = "served"

    def __init__(
        self,
        settings: RetrievalSettings | None = None,
        placement: str = "home",
        candidate_factor: int = CANDIDATE_FACTOR,
    ) -> None:
        super().__init__(settings, placement)
        self.candidate_factor = candidate_factor
        self._answers: dict[tuple[str, int, frozenset[str]], list[Candidate]] = {}
        self._fitted_on: Sequence[Interaction] | None = None
        self._members: MembersAsOf | None = None

    def prepare(self, as_of: datetime, prices: Mapping[str, float]) -> None:
        if as_of != self.as_of:
            self._members = None
        super().prepare(as_of, prices)

    def fit(self, train_rows: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        if self._fitted_on is train_rows and self._retriever is not None:
            return
        super().fit(train_rows, categories)
        self._fitted_on = train_rows
        self._answers.clear()
        self._members = None

    def candidates(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[Candidate]]:
        """Each member's candidates for showing k items: CANDIDATE_FACTOR times k asked of
        the retriever, in its order; the same list every time it is asked again."""
        asked, wanted = self.retriever, k * self.candidate_factor
        found: dict[str, list[Candidate]] = {}
        for member in member_ids:
            banned = tuple(sorted(exclude.get(member, ())))
            key = (member, wanted, frozenset(banned))
            answer = self._answers.get(key)
            if answer is None:
                request = CandidateRequest(member, self.placement, wanted, (), banned)
                answer = self._answers[key] = asked.candidates(request).candidates
            found[member] = answer
        return found

    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        return {
            member: [c.item_id for c in found[:k]]
            for member, found in self.candidates(member_ids, k, exclude).items()
        }

    def members(self) -> MembersAsOf:
        """The members as of the split's instant, replayed from the train events once."""
        if self._members is None:
            as_of = self.as_of or max(
                (e.timestamp for e in self.train_events), default=datetime.now(UTC)
            )
            self._members = MembersAsOf(self.train_events, as_of)
        return self._members

    def candidate_counts(self) -> dict[str, Any]:
        """How many candidates each answer asked for and held, over every answer kept."""
        sizes = [len(found) for found in self._answers.values()]
        asked = sorted({wanted for _, wanted, _ in self._answers})
        return {
            "asked_per_member": asked[0] if len(asked) == 1 else asked,
            "answers": len(sizes),
            "mean": round(float(np.mean(sizes)), 2) if sizes else 0.0,
            "min": min(sizes, default=0),
            "max": max(sizes, default=0),
        }

    def notes(self) -> dict[str, Any]:
        counts = self.candidate_counts()
        return {
            "summary": f"retrieval's order: the first k of {counts['asked_per_member']} "
            f"candidates per member ({self.placement} placement)",
            "order": "retrieval's (the fused score the retrieval service answers), as the "
            "gateway shows candidates when no ranker answers",
            "candidates": counts,
            "conversion": CONVERSION,
        }

    def params(self) -> dict[str, object]:
        return {**super().params(), "candidate_factor": self.candidate_factor}


class AlsModel(FleetModel):
    name = "als"

    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        retriever = self.retriever
        model = retriever.model
        found: dict[str, list[str]] = {}
        for member in member_ids:
            allowed = np.ones(model.item_count, dtype=bool)
            banned = [model.position[i] for i in exclude.get(member, ()) if i in model.position]
            allowed[banned] = False
            ask = sources.Ask(retriever.activity.get(member), (), k, allowed, datetime.now(UTC))
            # ALS alone ranks every item, what the member owns included.
            found[member] = sources.als(model, ask, keep_owned=True)
        return found


# --------------------------------------------------------------------------- re-ranked


class MembersAsOf:
    """Every member as a ranking request describes them at `as_of`: the profiles service's
    code replayed over `events` (`MemberReplay`, as the learned ranker's training reads
    members), those after `as_of` left out. Each context carries the member's recent
    items, newest first."""

    def __init__(self, events: Sequence[Event], as_of: datetime) -> None:
        from services.profiles.settings import ProfilesSettings
        from services.ranking.features import ItemFeatureState
        from services.ranking.ltr import MemberReplay

        self.as_of = as_of
        self._state = ItemFeatureState()
        self._replay = MemberReplay(ProfilesSettings())
        self.events = 0
        for event in events:
            if event.timestamp > as_of:
                continue
            self._state.apply([event])
            self._replay.apply(event, self._state)
            self.events += 1
        self._contexts: dict[str, MemberContext] = {}

    def context(self, member_id: str) -> MemberContext:
        found = self._contexts.get(member_id)
        if found is None:
            member, recent = self._replay.context(member_id, self.as_of, self._state)
            found = self._contexts[member_id] = dataclasses.replace(member, recent_items=recent)
        return found


class RerankedModel(Model):
    """The candidates of `served` (the same lists, asked once) in a ranker's order."""

    ranker_name = ""

    def __init__(self, served: ServedModel | None = None) -> None:
        self.served = served or ServedModel()

    def prepare(self, as_of: datetime, prices: Mapping[str, float]) -> None:
        self.served.prepare(as_of, prices)

    def fit(self, train: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        self.served.fit(train, categories)
        self.served.members()

    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        members = self.served.members()
        return {
            member: self._order(members.context(member), found, k)
            for member, found in self.served.candidates(member_ids, k, exclude).items()
        }

    @abc.abstractmethod
    def _order(self, member: MemberContext, candidates: list[Candidate], k: int) -> list[str]:
        """The first k of the candidates in this ranker's order."""

    def notes(self) -> dict[str, Any]:
        counts = self.served.candidate_counts()
        members = self.served.members()
        return {
            "summary": f"{self.ranker_name} re-ranks served's {counts['asked_per_member']} "
            f"candidates per member, members as of {members.as_of:%Y-%m-%d %H:%M} UTC",
            "candidates": counts,
            "members_as_of": members.as_of.isoformat(),
            "member_context": f"the profiles code replayed over {members.events} train "
            "events (services.ranking.ltr.MemberReplay)",
            "conversion": CONVERSION,
        }


class ServedBlendModel(RerankedModel):
    """Served's candidates in the order of the ranking service's `BlendRanker`, with its
    default weights."""

    name = "served-blend"
    ranker_name = "blend"

    def __init__(self, served: ServedModel | None = None) -> None:
        from services.ranking.rankers import BlendRanker
        from services.ranking.settings import BlendWeights

        super().__init__(served)
        self.weights = BlendWeights()
        self._ranker = BlendRanker(self.weights)

    def _order(self, member: MemberContext, candidates: list[Candidate], k: int) -> list[str]:
        ranked = self._ranker.rank(member, candidates, self.served.placement, k)
        return [r.item_id for r in ranked]

    def params(self) -> dict[str, object]:
        return {"ranker": "blend", "weights": self.weights.model_dump()}

    def notes(self) -> dict[str, Any]:
        return {**super().notes(), "weights": self.weights.model_dump()}


class ServedLtrModel(RerankedModel):
    """Served's candidates in the order of an `ltr` model trained by `train_ltr` on the
    train part's events only (those up to `as_of`), serving with the items' state its
    training replay ended with and its clock at `as_of`; skipped (with why) where
    LightGBM does not import or the train part gives too few training groups."""

    name = "served-ltr"
    ranker_name = "ltr"

    def __init__(self, served: ServedModel | None = None, **train_options: Any) -> None:
        super().__init__(served)
        self.train_options = train_options
        self._ranker: LtrRanker | None = None

    def fit(self, train: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        problem = lightgbm_problem()
        if problem is not None:
            self.skipped = problem
            return
        from services.common.clock import Clock
        from services.ranking.ltr import LtrRanker, NotEnoughData, train_ltr
        from services.ranking.settings import RankingSettings

        super().fit(train, categories)
        as_of = self.served.members().as_of
        options = {"num_threads": RankingSettings().train_threads, **self.train_options}
        with tempfile.TemporaryDirectory(prefix="recofleet-evaluate-ltr-") as folder:
            try:
                train_ltr(self.served.train_events, Path(folder), now=as_of, **options)
            except NotEnoughData as exc:
                self.skipped = f"ltr: {exc}"
                return
            # The model and the items' state are read into memory: the folder can go.
            self._ranker = LtrRanker.load(Path(folder), clock=Clock.fixed(as_of))

    @property
    def ranker(self) -> LtrRanker:
        if self._ranker is None:
            raise RuntimeError(f"{self.name}: fit it first")
        return self._ranker

    def _order(self, member: MemberContext, candidates: list[Candidate], k: int) -> list[str]:
        ranked = self.ranker.rank(member, candidates, self.served.placement, k)
        return [r.item_id for r in ranked]

    def params(self) -> dict[str, object]:
        if self._ranker is None:
            return {"ranker": "ltr", **self.train_options}
        meta = self._ranker.meta
        return {
            "ranker": "ltr",
            "settings": meta.get("settings", {}),
            "lightgbm": meta.get("lightgbm", {}),
        }

    def notes(self) -> dict[str, Any]:
        found = super().notes()
        if self._ranker is None:
            return found
        meta = self._ranker.meta
        figures = meta.get("metrics", {})
        validation = figures.get("validation_ndcg@10", {})
        found["summary"] += (
            f"; trained on {meta.get('events')} train events ({meta.get('trained_from')}), "
            f"validation NDCG@10 {validation.get('ltr')} vs {validation.get('baseline')} "
            f"({figures.get('baseline')})"
        )
        importance = meta.get("feature_importance", {})
        found["ltr"] = {
            "trained_from": meta.get("trained_from"),
            "events": meta.get("events"),
            "data_window": meta.get("data_window"),
            "groups": meta.get("groups"),
            "items_known": meta.get("items_known"),
            "validation": figures,
            "best_iteration": meta.get("lightgbm", {}).get("best_iteration"),
            "top_features": sorted(importance, key=lambda n: -importance[n])[:5],
            "unseen_features": meta.get("unseen_features"),
            "training_seconds": meta.get("training_seconds"),
        }
        return found


def lightgbm_problem() -> str | None:
    """Why the learned ranker cannot train here (LightGBM does not import), or None."""
    try:
        import lightgbm  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"LightGBM does not import here: {exc}"
    return None


def read_store(store: InteractionStore, source: str) -> Dataset:
    """What a running fleet's retrieval service has recorded, as a data set: every
    interaction line (its event is its basket; the store keeps weights, not quantities)
    and the catalog's categories."""
    rows = [
        Interaction(r.member_id, r.item_id, r.at, r.event_type, 1.0, r.basket)
        for r in store.training_rows()
    ]
    categories = {i.item_id: i.category for i in store.catalog_items() if i.category}
    return Dataset("retrieval-store", source, by_time(rows), categories)


def interactions_to_events(
    rows: Sequence[Interaction],
    categories: Mapping[str, str] | None = None,
    prices: Mapping[str, float] | None = None,
) -> list[Event]:
    """The interactions as the native events a shop would have sent, oldest first (see
    CONVERSION): what the fleet's models are trained on in an evaluation.

    The lines of one basket of a member and type are one event, its basket the order id:
    a purchase with its lines. A purchase without a basket id is the member's lines of
    that instant (one order, as `splits.basket_key` reads it), without an order id; any
    other type without one is an event per line (a view is a view). Lines carry quantity
    (a `rate` its rating), the item's category and its typical price where the data set
    knows them; rows of a type that is no native event type are left out.
    """
    categories, prices = categories or {}, prices or {}
    groups: dict[tuple[str, str, str, str], list[Interaction]] = {}
    for row in rows:
        if row.type not in TYPES:
            continue
        if row.basket:
            key = (row.member_id, row.type, "basket", row.basket)
        elif row.type == EventType.PURCHASE.value:
            key = (row.member_id, row.type, "instant", row.at.isoformat())
        else:
            key = (row.member_id, row.type, row.at.isoformat(), row.item_id)
        groups.setdefault(key, []).append(row)
    events: list[Event] = []
    for rows_of_one in groups.values():
        first = rows_of_one[0]
        kind = EventType(first.type)
        lines = _lines(rows_of_one, categories, prices)
        # An event holds at most MAX_LINES lines: a larger order is sent in parts.
        for start in range(0, len(lines), MAX_LINES):
            events.append(
                Event(
                    event_id=f"evaluate-{len(events)}",
                    type=kind,
                    member_id=first.member_id,
                    items=lines[start : start + MAX_LINES],
                    order_id=(first.basket or None) if kind in ORDER_TYPES else None,
                    rating=min(max(first.value, 0.0), 5.0) if kind == EventType.RATE else None,
                    timestamp=min(r.at for r in rows_of_one),
                )
            )
    return sorted(events, key=lambda e: e.timestamp)


# What the report says of the conversion, with the function's name.
CONVERSION = {
    "function": f"{__name__}.interactions_to_events",
    "events": "one per basket (order id) of a member and type; a purchase without a basket "
    "id: the member's lines of one instant; any other type without one: one per line",
    "lines": "quantity (a rate: its rating on the event), the item's category and its "
    "typical unit price in the data set where known (interactions carry no paid price)",
    "left_out": "rows whose type is no native event type",
}


def _lines(
    rows: Sequence[Interaction], categories: Mapping[str, str], prices: Mapping[str, float]
) -> list[EventItem]:
    quantity: dict[str, int] = {}
    for row in rows:
        counted = 1 if row.type == EventType.RATE.value else max(int(row.value), 1)
        quantity[row.item_id] = quantity.get(row.item_id, 0) + counted
    return [
        EventItem(
            item_id=item,
            quantity=min(count, MAX_QUANTITY),
            price=_price(prices.get(item), min(count, MAX_QUANTITY)),
            category=categories.get(item) or None,
        )
        for item, count in quantity.items()
    ]


def _price(price: float | None, quantity: int) -> float | None:
    if price is None or not price > 0 or price * quantity > MAX_AMOUNT:
        return None
    return round(price, 4)


def _batches(events: Iterator[Event], size: int) -> Iterator[list[Event]]:
    while batch := list(islice(events, size)):
        yield batch
