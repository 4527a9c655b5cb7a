"""Retrieval's answers, from the live model and the interaction store. No transport here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.candidates import Candidate
from services.retrieval.model import RetrievalModel, Scored
from services.retrieval.model_store import ModelStore
from services.retrieval.store import InteractionStore

log = logging.getLogger(__name__)


class NoModel(RuntimeError):
    """No trained model is available yet (run the trainer)."""


@dataclass(frozen=True)
class Answer:
    candidates: list[Candidate]
    model_version: str
    personalized: bool


class Retriever:
    """Serves from whichever model version is current; `reload` swaps in a newer one."""

    def __init__(self, store: InteractionStore, models: ModelStore, history_limit: int) -> None:
        self._store = store
        self._models = models
        self._history_limit = history_limit
        self._model: RetrievalModel | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> RetrievalModel:
        if self._model is None:
            raise NoModel("no trained retrieval model yet; run `recofleet train`")
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    def reload(self) -> bool:
        """Load the current version if it is not the one served; True when it swapped."""
        version = self._models.current()
        if version is None or (self._model and self._model.version == version):
            return False
        with self._lock:
            loaded = RetrievalModel.load(self._models.path(version))
            self._model = loaded  # one reference swap: calls in flight finish on the old model
        log.info("serving retrieval model %s (%d items)", version, loaded.item_count)
        return True

    def for_member(self, member_id: str, limit: int, exclude: Sequence[str]) -> Answer:
        model = self.model
        history = self._store.member_history(member_id, self._history_limit)
        found = model.for_member(history, limit, set(exclude)) if history else []
        if not found:
            return self._popular(model, limit, set(exclude), None)
        return Answer(self._candidates(model, found, "als"), model.version, True)

    def similar(self, item_id: str, limit: int, exclude: Sequence[str]) -> Answer:
        model = self.model
        found = model.similar(item_id, limit, set(exclude))
        if found is None:
            # An item the model has not seen yet: the best we can say is what is popular.
            category = self._store.categories([item_id]).get(item_id)
            return self._popular(model, limit, set(exclude) | {item_id}, category)
        return Answer(self._candidates(model, found, "similar"), model.version, True)

    def popular(self, limit: int, exclude: Sequence[str], category: str | None) -> Answer:
        return self._popular(self.model, limit, set(exclude), category)

    def _popular(
        self, model: RetrievalModel, limit: int, exclude: set[str], category: str | None
    ) -> Answer:
        keep = None
        if category:

            def keep(ids: Sequence[str]) -> set[str]:
                return {i for i, c in self._store.categories(ids).items() if c == category}

        found = model.popular(limit, exclude, keep)
        return Answer(self._candidates(model, found, "popular"), model.version, False)

    def _candidates(self, model: RetrievalModel, found: Scored, source: str) -> list[Candidate]:
        categories = self._store.categories([item_id for item_id, _ in found])
        return [
            Candidate(
                item_id=item_id,
                score=score,
                popularity=model.popularity(item_id),
                category=categories.get(item_id, ""),
                source=source,
            )
            for item_id, score in found
        ]
