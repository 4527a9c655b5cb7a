"""A trained retrieval model: ALS item factors, FAISS indexes over them, item popularity.

Members are placed by folding in their latest interactions against the fixed item
factors (one small least-squares solve), so a member who arrived after training, or
who acted since, gets recommendations that reflect it without retraining. For the same
reason the model files keep no member data (no user factors, no member ids): erasing a
member touches the interaction store only (docs/erasure.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix

Scored = list[tuple[str, float]]

ALS_FILE = "als.npz"
ITEMS_FILE = "items.json"
POPULARITY_FILE = "popularity.npy"
IP_INDEX_FILE = "items_ip.faiss"
COSINE_INDEX_FILE = "items_cosine.faiss"


class RetrievalModel:
    def __init__(
        self,
        version: str,
        meta: dict[str, Any],
        als: AlternatingLeastSquares,
        item_ids: list[str],
        popularity: np.ndarray,
        ip_index: faiss.Index,
        cosine_index: faiss.Index,
    ) -> None:
        self.version = version
        self.meta = meta
        self._als = als
        self._item_ids = item_ids
        self._position = {item_id: i for i, item_id in enumerate(item_ids)}
        self._popularity = popularity
        self._by_popularity = np.argsort(-popularity, kind="stable")
        self._ip_index = ip_index
        self._cosine_index = cosine_index

    @classmethod
    def load(cls, folder: Path) -> RetrievalModel:
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            version=meta["version"],
            meta=meta,
            als=AlternatingLeastSquares.load(str(folder / ALS_FILE)),
            item_ids=json.loads((folder / ITEMS_FILE).read_text()),
            popularity=np.load(folder / POPULARITY_FILE),
            ip_index=faiss.read_index(str(folder / IP_INDEX_FILE)),
            cosine_index=faiss.read_index(str(folder / COSINE_INDEX_FILE)),
        )

    @property
    def item_count(self) -> int:
        return len(self._item_ids)

    def popularity(self, item_id: str) -> float:
        position = self._position.get(item_id)
        return float(self._popularity[position]) if position is not None else 0.0

    def for_member(self, history: Mapping[str, float], limit: int, exclude: set[str]) -> Scored:
        """Items for a member with this history; [] when none of it is in the model."""
        known = [(self._position[i], w) for i, w in history.items() if i in self._position]
        if not known:
            return []
        columns, weights = zip(*known, strict=True)
        row = csr_matrix(
            (np.asarray(weights, dtype=np.float32), ([0] * len(columns), list(columns))),
            shape=(1, len(self._item_ids)),
        )
        vector = self._als.recalculate_user(0, row)
        return self._search(self._ip_index, vector, limit, exclude)

    def similar(self, item_id: str, limit: int, exclude: set[str]) -> Scored | None:
        """Items closest to `item_id` by cosine of factors; None when the item is unknown."""
        position = self._position.get(item_id)
        if position is None:
            return None
        vector = self._cosine_index.reconstruct(position)
        return self._search(self._cosine_index, vector, limit, exclude | {item_id})

    def popular(
        self, limit: int, exclude: set[str], keep: Callable[[Sequence[str]], set[str]] | None = None
    ) -> Scored:
        """Most popular items; `keep` narrows a page of item ids (a category, say)."""
        found: Scored = []
        page = 200
        for start in range(0, len(self._by_popularity), page):
            ids = [self._item_ids[p] for p in self._by_popularity[start : start + page]]
            ids = [i for i in ids if i not in exclude]
            allowed = keep(ids) if keep else set(ids)
            found.extend((i, self.popularity(i)) for i in ids if i in allowed)
            if len(found) >= limit:
                break
        return found[:limit]

    def _search(
        self, index: faiss.Index, vector: np.ndarray, limit: int, exclude: set[str]
    ) -> Scored:
        wanted = min(limit + len(exclude), len(self._item_ids))
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        scores, positions = index.search(query, wanted)
        found: Scored = []
        for score, position in zip(scores[0], positions[0], strict=True):
            if position < 0:
                continue
            item_id = self._item_ids[position]
            if item_id not in exclude:
                found.append((item_id, float(score)))
        return found[:limit]
