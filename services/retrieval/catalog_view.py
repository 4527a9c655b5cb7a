"""Retrieval's in-memory view of the catalog: category and stock per item.

Filters are applied during the search (services/retrieval/index.py), as a mask over the
model's item positions, so the view keeps the masks of the current model per category and
rebuilds them only when the catalog or the model changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from services.common.events import CatalogItem
from services.retrieval.model import RetrievalModel


class CatalogView:
    def __init__(self, items: Iterable[CatalogItem] = ()) -> None:
        self._category: dict[str, str] = {}
        self._sold_out: set[str] = set()
        self._lock = threading.Lock()
        self._generation = 0
        self._masks: dict[tuple[str, int, str], np.ndarray] = {}
        self._new: dict[tuple[str, int, str], list[str]] = {}
        self.update(items)

    def update(self, items: Iterable[CatalogItem]) -> None:
        with self._lock:
            for item in items:
                if item.category:
                    self._category[item.item_id] = item.category
                else:
                    self._category.pop(item.item_id, None)
                if item.in_stock:
                    self._sold_out.discard(item.item_id)
                else:
                    self._sold_out.add(item.item_id)
            self._generation += 1
            self._masks.clear()
            self._new.clear()

    def category(self, item_id: str) -> str:
        return self._category.get(item_id, "")

    def in_stock(self, item_id: str) -> bool:
        return item_id not in self._sold_out

    def allowed(self, model: RetrievalModel, category: str = "") -> np.ndarray:
        """In stock (and of `category`, when given) per model position; do not modify."""
        key = (model.version, self._generation, category)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.fromiter(
                (self._keeps(i, category) for i in model.item_ids), bool, model.item_count
            )
            mask.setflags(write=False)
            self._masks[key] = mask
        return mask

    def new_items(self, model: RetrievalModel, category: str) -> list[str]:
        """In-stock items of `category` the model has not seen (added since it was trained)."""
        key = (model.version, self._generation, category)
        found = self._new.get(key)
        if found is None:
            with self._lock:
                found = sorted(
                    i
                    for i, c in self._category.items()
                    if c == category and i not in model.position and i not in self._sold_out
                )
            self._new[key] = found
        return found

    def _keeps(self, item_id: str, category: str) -> bool:
        if item_id in self._sold_out:
            return False
        return not category or self._category.get(item_id) == category
