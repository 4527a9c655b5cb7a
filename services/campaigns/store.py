"""What campaigns keep: its copy of the catalog (stock, price, category) from the catalog topic."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from sqlalchemy import Engine, MetaData, select

from services.common.catalog import catalog_table, save_items
from services.common.db import make_engine
from services.common.events import CatalogItem
from services.common.migrations import upgrade


class CatalogStore(abc.ABC):
    @abc.abstractmethod
    def save(self, items: Sequence[CatalogItem]) -> None: ...

    @abc.abstractmethod
    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        """Those of the items the catalog says are not in stock. From memory: it is asked
        on every recommendation."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Read the stock again from the store, for what other replicas saved."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
catalog = catalog_table(metadata)


class SqlCatalogStore(CatalogStore):
    """The catalog in SQL; the ids of the items out of stock (few, next to the catalog) also
    in memory, updated by each save and by `refresh`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        upgrade(engine, "campaigns")
        self._sold_out: frozenset[str] = frozenset()
        self.refresh()

    @classmethod
    def from_url(cls, url: str) -> SqlCatalogStore:
        return cls(make_engine(url))

    def save(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)
        latest = {item.item_id: item.in_stock for item in items}
        back = {item_id for item_id, in_stock in latest.items() if in_stock}
        gone = {item_id for item_id, in_stock in latest.items() if not in_stock}
        # One assignment: a request reading the set meanwhile sees the old or the new one.
        self._sold_out = (self._sold_out - back) | gone

    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        sold_out = self._sold_out
        return {item_id for item_id in item_ids if item_id in sold_out}

    def refresh(self) -> None:
        query = select(catalog.c.item_id).where(catalog.c.in_stock.is_(False))
        with self._engine.connect() as conn:
            self._sold_out = frozenset(conn.execute(query).scalars())

    def close(self) -> None:
        self._engine.dispose()
