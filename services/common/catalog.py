"""A service's local copy of the catalog, kept from the catalog topic.

Several services need a few facts about items (category for affinities, stock for
filters); each keeps its own table rather than calling another service on a hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Boolean, Column, Connection, Float, MetaData, String, Table, select

from services.common.db import upsert
from services.common.events import CatalogItem


def catalog_table(metadata: MetaData) -> Table:
    return Table(
        "catalog_items",
        metadata,
        Column("item_id", String(128), primary_key=True),
        Column("name", String(500)),
        Column("category", String(128)),
        Column("price", Float),
        Column("in_stock", Boolean, nullable=False, default=True),
    )


def save_items(conn: Connection, table: Table, items: Sequence[CatalogItem]) -> None:
    # Later records for an item win: the catalog topic is keyed by item so they arrive in order.
    latest = {item.item_id: item for item in items}
    rows = [
        (item.item_id, item.name, item.category, item.price, item.in_stock)
        for item in latest.values()
    ]
    upsert(conn, table, rows, keys=["item_id"])


def load_items(conn: Connection, table: Table, item_ids: Iterable[str]) -> dict[str, CatalogItem]:
    wanted = list(dict.fromkeys(item_ids))
    found: dict[str, CatalogItem] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for row in conn.execute(select(table).where(table.c.item_id.in_(chunk))).mappings():
            found[row["item_id"]] = CatalogItem(
                item_id=row["item_id"],
                name=row["name"],
                category=row["category"],
                price=row["price"],
                in_stock=row["in_stock"],
            )
    return found
