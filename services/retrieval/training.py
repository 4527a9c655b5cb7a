"""Train ALS on the interactions and publish a model version (the trainer job's core)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from services.retrieval.model import (
    ALS_FILE,
    COSINE_INDEX_FILE,
    IP_INDEX_FILE,
    ITEMS_FILE,
    POPULARITY_FILE,
)
from services.retrieval.model_store import ModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import InteractionStore

log = logging.getLogger(__name__)


class NotEnoughData(RuntimeError):
    """Too few interactions to learn anything from."""


@dataclass(frozen=True)
class TrainingOutcome:
    version: str
    trained: bool
    seconds: float
    meta: dict[str, Any]


@dataclass(frozen=True)
class Matrix:
    member_ids: list[str]
    item_ids: list[str]
    weights: csr_matrix


def build_matrix(store: InteractionStore) -> Matrix:
    members: dict[str, int] = {}
    items: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for interaction in store.interactions():
        rows.append(members.setdefault(interaction.member_id, len(members)))
        cols.append(items.setdefault(interaction.item_id, len(items)))
        values.append(interaction.weight)
    if len(members) < 2 or len(items) < 2:
        raise NotEnoughData(
            f"{len(values)} interactions of {len(members)} members on {len(items)} items; "
            "need at least 2 members and 2 items"
        )
    weights = csr_matrix(
        (np.asarray(values, dtype=np.float32), (rows, cols)), shape=(len(members), len(items))
    )
    return Matrix(list(members), list(items), weights)


def recipe(settings: RetrievalSettings) -> str:
    """What a model depends on besides the data: retrain when any of it changes."""
    fields = ("event_weights", "factors", "iterations", "regularization", "alpha", "random_seed")
    spec = json.dumps({f: getattr(settings, f) for f in fields}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def train(
    store: InteractionStore,
    models: ModelStore,
    settings: RetrievalSettings,
    *,
    force: bool = False,
) -> TrainingOutcome:
    """Train and publish a new version, unless the current one was trained on the same data."""
    started = time.perf_counter()
    fingerprint = f"{store.fingerprint()}:{recipe(settings)}"
    current = models.current()
    if current and not force and models.meta(current).get("fingerprint") == fingerprint:
        return TrainingOutcome(current, False, time.perf_counter() - started, models.meta(current))
    matrix = build_matrix(store)

    def build(folder: Path) -> dict[str, Any]:
        return _fit_and_write(matrix, settings, folder) | {"fingerprint": fingerprint}

    version = models.publish(build)
    elapsed = time.perf_counter() - started
    log.info("trained retrieval model %s in %.1fs", version, elapsed)
    return TrainingOutcome(version, True, elapsed, models.meta(version))


def _fit_and_write(matrix: Matrix, settings: RetrievalSettings, folder: Path) -> dict[str, Any]:
    # implicit runs its own threads; a second BLAS thread pool under them only thrashes.
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            alpha=settings.alpha,
            iterations=settings.iterations,
            random_state=settings.random_seed,
        )
        als.fit(matrix.weights, show_progress=False)
    item_factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)
    save_item_side(als, folder / ALS_FILE)
    (folder / ITEMS_FILE).write_text(json.dumps(matrix.item_ids))
    np.save(folder / POPULARITY_FILE, _popularity(matrix.weights))
    faiss.write_index(_index(item_factors), str(folder / IP_INDEX_FILE))
    faiss.write_index(_index(_normalized(item_factors)), str(folder / COSINE_INDEX_FILE))
    return {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "members": len(matrix.member_ids),
        "items": len(matrix.item_ids),
        "interactions": int(matrix.weights.nnz),
        "factors": settings.factors,
        "recipe": recipe(settings),
        # Members are folded in from their interactions when served: the model files hold
        # item factors and item figures only, so erasing a member never touches a model.
        "holds_member_data": False,
    }


def save_item_side(als: AlternatingLeastSquares, path: Path) -> None:
    """Save the model without its user factors (one row per member trained on): serving
    recomputes a member's factors from their interactions (`recalculate_user`), which reads
    the item factors and settings only. implicit saves no attribute that is None."""
    user_factors = als.user_factors
    als.user_factors = None
    try:
        als.save(str(path))
    finally:
        als.user_factors = user_factors


def _popularity(weights: csr_matrix) -> np.ndarray:
    # Members who touched the item, scaled to [0, 1]: one enthusiast cannot make an item popular.
    reach = np.asarray((weights > 0).sum(axis=0)).ravel().astype(np.float32)
    return reach / max(float(reach.max()), 1.0)


def _index(vectors: np.ndarray) -> faiss.Index:
    # Exact inner-product search: catalogs of a shop (thousands to ~1e5 items) search in
    # well under a millisecond per query on one core, with no recall to tune.
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
