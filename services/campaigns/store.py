"""What campaigns keep: its copy of the catalog (stock, price, category) from the catalog topic."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from sqlalchemy import Engine, MetaData

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import make_engine
from services.common.events import CatalogItem
from services.common.migrations import upgrade


class CatalogStore(abc.ABC):
    @abc.abstractmethod
    def save(self, items: Sequence[CatalogItem]) -> None: ...

    @abc.abstractmethod
    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        """Those of the items the catalog says are not in stock."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
catalog = catalog_table(metadata)


class SqlCatalogStore(CatalogStore):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        upgrade(engine, "campaigns")

    @classmethod
    def from_url(cls, url: str) -> SqlCatalogStore:
        return cls(make_engine(url))

    def save(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)

    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        with self._engine.connect() as conn:
            found = load_items(conn, catalog, item_ids)
        return {item_id for item_id, item in found.items() if not item.in_stock}

    def close(self) -> None:
        self._engine.dispose()
