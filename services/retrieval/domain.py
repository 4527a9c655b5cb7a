"""Retrieval's answers: the placement's sources asked, their proposals fused. No transport.

Members are served from memory (services/retrieval/activity.py): the consumer marks the
members its batches touched, so a member's new events change their candidates at the
next request, without retraining (ALS folds the member in from those lines).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from services.common.candidates import Candidate
from services.common.events import CatalogItem
from services.common.metrics import CACHES, model_served
from services.retrieval import sources
from services.retrieval.activity import ActivityCache
from services.retrieval.answers import AnswerCache
from services.retrieval.catalog_view import CatalogView
from services.retrieval.fusion import Fused, fuse
from services.retrieval.model import CorruptModel, RetrievalModel
from services.retrieval.model_store import ModelStore
from services.retrieval.settings import PlacementMix, RetrievalSettings
from services.retrieval.store import InteractionStore

log = logging.getLogger(__name__)


class NoModel(RuntimeError):
    """No trained model is available yet (run the trainer)."""


@dataclass(frozen=True)
class CandidateRequest:
    member_id: str = ""
    placement: str = "home"
    limit: int = 10
    context_items: Sequence[str] = ()
    exclude: Sequence[str] = ()
    category: str = ""


@dataclass(frozen=True)
class Answer:
    candidates: list[Candidate]
    model_version: str
    personalized: bool


class Retriever:
    """Serves from whichever model version is current; `reload` swaps in a newer one."""

    def __init__(
        self,
        store: InteractionStore,
        models: ModelStore,
        settings: RetrievalSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._models = models
        self._settings = settings
        self._clock = clock
        self._model: RetrievalModel | None = None
        self._lock = threading.Lock()
        self.catalog = CatalogView(store.catalog_items())
        self.activity = ActivityCache(
            lambda m: store.member_activity(m, settings.history_limit), settings.activity_members
        )
        # Filled and read by the servicer (what it keeps is its answers); emptied here, by
        # what changes them.
        self.answers: AnswerCache[bytes] = AnswerCache(
            settings.answer_cache_size, settings.answer_cache_ttl_s
        )
        CACHES.watch("retrieval_answers", self.answers)
        CACHES.watch("retrieval_activity", self.activity)

    @property
    def inline(self) -> bool:
        """Whether an answer may be computed on the event loop: the work is CPU, and the
        only read (a member's lines, once) is from an embedded store."""
        return self._store.embedded

    @property
    def model(self) -> RetrievalModel:
        if self._model is None:
            raise NoModel("no trained retrieval model yet; run `recofleet train`")
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    def reload(self) -> bool:
        """Load the current version if it is not the one served; True when it swapped. A
        version that cannot be loaded is refused once (recorded in the model store) and the
        one served stays. Refusals are the model store's, so activating a refused version
        again (`ModelStore.activate`, which clears the refusal) lets every server retry it."""
        version = self._models.current()
        if version is None or version in self._models.refused():
            return False
        if self._model and self._model.version == version:
            return False
        with self._lock:
            try:
                loaded = RetrievalModel.load(self._models.path(version))
            except CorruptModel as exc:
                self._models.refuse(version, str(exc))
                log.error("refused retrieval model %s: %s; serving the last one", version, exc)
                return False
            self._model = loaded  # one reference swap: calls in flight finish on the old model
        self.answers.clear()
        model_served("retrieval", version)
        log.info("serving retrieval model %s (%d items)", version, loaded.item_count)
        return True

    # What the consumer tells the server, after each batch is committed.
    def members_changed(self, member_ids: Iterable[str]) -> None:
        members = list(member_ids)
        self.activity.touched(members)
        self.answers.touched(members)

    def catalog_changed(self, items: Sequence[CatalogItem]) -> None:
        self.catalog.update(items)
        self.answers.clear()

    def candidates(self, request: CandidateRequest) -> Answer:
        model = self.model
        mix = self._mix(request.placement)
        activity = self.activity.get(request.member_id) if request.member_id else []
        known_seeds = [i for i in request.context_items if i in model.position]
        ask = sources.Ask(
            activity=activity,
            seeds=tuple(request.context_items),
            limit=request.limit,
            allowed=self._allowed(model, request),
            now=self._clock(),
            excluded=frozenset(request.exclude) | frozenset(request.context_items),
            category=request.category,
            repeat=mix.repeat_purchases,
        )
        proposals, strengths = self._proposals(model, ask, mix)
        fused = fuse(proposals, model.parts.calibration, mix.sources, strengths, request.limit)
        fused = self._filled(model, ask, fused, request)
        personalized = bool(activity) or bool(known_seeds)
        return Answer(
            self._to_candidates(model, fused[: request.limit]), model.version, personalized
        )

    def for_member(self, member_id: str, limit: int, exclude: Sequence[str]) -> Answer:
        return self.candidates(CandidateRequest(member_id, "home", limit, (), exclude))

    def similar(self, item_id: str, limit: int, exclude: Sequence[str]) -> Answer:
        category = self.catalog.category(item_id)
        if item_id not in self.model.position:
            # An item the model has not seen yet: what is popular in its category.
            return self.popular(limit, [*exclude, item_id], category or None)
        request = CandidateRequest("", "product", limit, (item_id,), exclude)
        return self.candidates(request)

    def popular(self, limit: int, exclude: Sequence[str], category: str | None) -> Answer:
        model = self.model
        request = CandidateRequest(limit=limit, exclude=exclude, category=category or "")
        ask = sources.Ask((), (), limit, self._allowed(model, request), self._clock())
        found = [
            Fused(i, model.popularity(i), {"popular": 0.0}) for i in sources.popular(model, ask)
        ]
        return Answer(self._to_candidates(model, found), model.version, False)

    def _mix(self, placement: str) -> PlacementMix:
        placements = self._settings.placements
        return placements.get(placement or "home") or placements.get("home") or _EVERYTHING

    def _allowed(self, model: RetrievalModel, request: CandidateRequest) -> np.ndarray:
        mask = self.catalog.allowed(model, request.category)
        banned = [
            model.position[i]
            for i in (*request.exclude, *request.context_items)
            if i in model.position
        ]
        if not banned:
            return mask
        mask = mask.copy()
        mask[banned] = False
        return mask

    def _proposals(
        self, model: RetrievalModel, ask: sources.Ask, mix: PlacementMix
    ) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
        """Each weighted source's proposals, and buy-again's strengths (read by fusion)."""
        strengths: dict[str, dict[str, float]] = {}

        def again() -> list[str]:
            strengths["buy_again"] = sources.buy_again_strengths(model, ask, self.catalog)
            return list(strengths["buy_again"])

        ask_for: dict[str, Callable[[], list[str]]] = {
            "als": lambda: sources.als(model, ask),
            "buy_again": again,
            "bought_together": lambda: sources.bought_together(model, ask),
            "similar": lambda: sources.similar(model, ask),
            "content": lambda: sources.content(model, ask, self.catalog),
            "trending": lambda: sources.trending(model, ask),
        }
        proposals: dict[str, list[str]] = {
            s: ask_for[s]() for s, weight in mix.sources.items() if weight > 0
        }
        return proposals, strengths

    def _filled(
        self,
        model: RetrievalModel,
        ask: sources.Ask,
        fused: list[Fused],
        request: CandidateRequest,
    ) -> list[Fused]:
        """Up to the limit with popular items, below every fused one: a request for k items
        gets k whenever the filters allow that many."""
        if len(fused) >= request.limit:
            return fused
        present = {f.item_id for f in fused}
        # What the member owns stays out too when the placement takes no repeat purchases.
        taken = present if ask.repeat else present | ask.owned
        floor = min((f.score for f in fused), default=1.0)
        wide = sources.Ask((), ask.seeds, request.limit + len(taken), ask.allowed, ask.now)
        extra = [i for i in sources.popular(model, wide) if i not in taken]
        need = request.limit - len(fused)
        step = floor / (need + 1)
        padding = [
            Fused(i, floor - step * (n + 1), {"popular": 0.0}) for n, i in enumerate(extra[:need])
        ]
        return fused + padding

    def _to_candidates(self, model: RetrievalModel, found: Sequence[Fused]) -> list[Candidate]:
        # The items' popularity read in one step (items bought since training have none).
        positions = np.array([model.position.get(f.item_id, -1) for f in found], dtype=np.int64)
        known = positions >= 0
        popularity = np.zeros(len(found))
        popularity[known] = model.parts.popularity[positions[known]]
        category = self.catalog.category
        return [
            Candidate(
                item_id=f.item_id,
                score=round(f.score, 6),
                popularity=p,
                category=category(f.item_id),
                source=f.source,
                sources={s: round(c, 6) for s, c in f.sources.items()},
            )
            for f, p in zip(found, popularity.tolist(), strict=True)
        ]


_EVERYTHING = PlacementMix(sources={"als": 1.0, "trending": 1.0})
