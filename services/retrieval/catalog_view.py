"""Retrieval's in-memory view of the catalog: category and stock per item.

Filters are applied during the search (services/retrieval/index.py), as a mask over the
model's item positions. The view indexes the served model's items once per model and
catalog change (the in-stock mask, each category's positions, the items added since
training per category), so that a request's filter is array work, not a walk over the
catalog: at 250,000 items and thousands of categories, a walk per category cost tens of
milliseconds a request and a cached mask per category a byte per item per category.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.common.events import CatalogItem
from services.retrieval.model import RetrievalModel

NONE = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class _Index:
    """One model's items against one state of the catalog."""

    in_stock: np.ndarray  # bool per position, read-only
    positions: dict[str, np.ndarray]  # category -> in-stock positions
    new_items: dict[str, list[str]]  # category -> in-stock items the model has not seen


class CatalogView:
    def __init__(self, items: Iterable[CatalogItem] = ()) -> None:
        self._category: dict[str, str] = {}
        self._sold_out: set[str] = set()
        self._lock = threading.Lock()
        self._generation = 0
        self._index: tuple[tuple[str, int], _Index] | None = None
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

    def category(self, item_id: str) -> str:
        return self._category.get(item_id, "")

    def in_stock(self, item_id: str) -> bool:
        return item_id not in self._sold_out

    def allowed(self, model: RetrievalModel, category: str = "") -> np.ndarray:
        """In stock (and of `category`, when given) per model position; do not modify."""
        index = self._indexed(model)
        if not category:
            return index.in_stock
        mask = np.zeros(model.item_count, dtype=bool)
        mask[index.positions.get(category, NONE)] = True
        return mask

    def positions(self, model: RetrievalModel, category: str) -> np.ndarray:
        """The model positions of the in-stock items of `category`."""
        return self._indexed(model).positions.get(category, NONE)

    def new_items(self, model: RetrievalModel, category: str) -> list[str]:
        """In-stock items of `category` the model has not seen (added since it was trained)."""
        return self._indexed(model).new_items.get(category, [])

    def _indexed(self, model: RetrievalModel) -> _Index:
        key = (model.version, self._generation)
        cached = self._index
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._lock:
            index = self._build(model)
            self._index = (key, index)
        return index

    def _build(self, model: RetrievalModel) -> _Index:
        sold_out = self._sold_out
        in_stock = np.fromiter((i not in sold_out for i in model.item_ids), bool, model.item_count)
        in_stock.setflags(write=False)
        grouped: dict[str, list[int]] = {}
        new_items: dict[str, list[str]] = {}
        for item_id, category in self._category.items():
            if item_id in sold_out:
                continue
            position = model.position.get(item_id)
            if position is None:
                new_items.setdefault(category, []).append(item_id)
            else:
                grouped.setdefault(category, []).append(position)
        positions = {c: np.sort(np.asarray(p, dtype=np.int64)) for c, p in grouped.items()}
        return _Index(in_stock, positions, {c: sorted(i) for c, i in new_items.items()})
