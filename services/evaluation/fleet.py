"""The fleet's own models in an evaluation, through the code the services run.

`served` is what the retrieval service answers: the train interactions are written as
native events into a real interaction store, `recofleet train`'s training publishes a
model into a model store, and the service's `Retriever` is asked for each member's
candidates for a placement (home by default), exactly as a gRPC request would ask it.
`als` is the same model's ALS source alone: members folded in from their interactions
and searched in the FAISS index, nothing else mixed in.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import numpy as np

from services.common.events import CatalogItem, Event, EventItem, EventType
from services.evaluation.baselines import Exclude, Model
from services.evaluation.data import Dataset, Interaction, by_time
from services.retrieval import sources
from services.retrieval.domain import CandidateRequest, Retriever
from services.retrieval.model_store import LocalModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import InteractionStore, SqlInteractionStore
from services.retrieval.training import train

BATCH = 5_000
TYPES = {t.value for t in EventType}


class FleetModel(Model):
    """Trains the fleet's retrieval model on the train interactions, in a scratch folder."""

    def __init__(self, settings: RetrievalSettings | None = None, placement: str = "home") -> None:
        self.settings = settings or RetrievalSettings()
        self.placement = placement
        self._folder: Path | None = None
        self._retriever: Retriever | None = None
        self._store: SqlInteractionStore | None = None
        self.meta: dict[str, object] = {}

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
        for batch in _batches(_events(train_rows), BATCH):
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
    name = "served"

    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        asked = self.retriever
        return {
            m: [
                c.item_id
                for c in asked.candidates(
                    CandidateRequest(m, self.placement, k, (), tuple(exclude.get(m, ())))
                ).candidates
            ]
            for m in member_ids
        }


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


def _events(rows: Sequence[Interaction]) -> Iterator[Event]:
    """Lines of one basket (or one instant, without baskets) of a member as one event."""
    groups: dict[tuple[str, str, str, str], list[Interaction]] = {}
    for row in rows:
        if row.type not in TYPES:
            continue
        if row.basket:
            key = (row.member_id, row.type, row.basket, "")
        else:
            key = (row.member_id, row.type, row.at.isoformat(), row.item_id)
        groups.setdefault(key, []).append(row)
    for number, lines in enumerate(groups.values()):
        first = lines[0]
        items = _lines(lines)
        as_lines = len(items) > 1 or first.type == "purchase"
        yield Event(
            event_id=f"evaluate-{number}",
            type=EventType(first.type),
            member_id=first.member_id,
            items=items if as_lines else [],
            item_id=None if as_lines else first.item_id,
            rating=min(max(first.value, 0.0), 5.0) if first.type == "rate" else None,
            timestamp=min(r.at for r in lines),
        )


def _lines(rows: Sequence[Interaction]) -> list[EventItem]:
    quantity: dict[str, int] = {}
    for row in rows:
        quantity[row.item_id] = quantity.get(row.item_id, 0) + max(int(row.value), 1)
    return [EventItem(item_id=i, quantity=min(q, 100_000)) for i, q in quantity.items()]


def _batches(events: Iterator[Event], size: int) -> Iterator[list[Event]]:
    while batch := list(islice(events, size)):
        yield batch
