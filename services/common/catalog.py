"""A service's local copy of the catalog, kept from the catalog topic.

Several services need a few facts about items (category for affinities, stock for
filters); each keeps its own table rather than calling another service on a hot path.
A service that needs the rest of what the shop says of an item (brand, tags, attributes:
campaigns' merchandising rules) asks for the table `with_details`; the others keep the
narrow one, so that a change of the details needs no migration of theirs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    MetaData,
    RowMapping,
    String,
    Table,
    select,
)

from services.common.db import upsert
from services.common.events import CatalogItem

# The columns of the table `with_details` beyond the narrow one's.
DETAILS = ("brand", "tags", "attributes", "changed_at_s")


def catalog_table(metadata: MetaData, *, with_details: bool = False) -> Table:
    """The catalog table; `with_details` adds brand, tags, attributes and when each row
    last changed (epoch seconds, so that replicas read again only what changed)."""
    table = Table(
        "catalog_items",
        metadata,
        Column("item_id", String(128), primary_key=True),
        Column("name", String(500)),
        Column("category", String(128)),
        Column("price", Float),
        Column("in_stock", Boolean, nullable=False, default=True),
        *(_details() if with_details else ()),
    )
    if with_details:
        Index("ix_catalog_items_changed", table.c.changed_at_s)
    return table


def _details() -> list[Column[Any]]:
    return [
        Column("brand", String(128)),
        Column("tags", JSON),
        Column("attributes", JSON),
        Column("changed_at_s", Float),
    ]


def has_details(table: Table) -> bool:
    return "tags" in table.c


def save_items(conn: Connection, table: Table, items: Sequence[CatalogItem]) -> None:
    # Later records for an item win: the catalog topic is keyed by item so they arrive in order.
    latest = {item.item_id: item for item in items}
    rows: list[tuple[Any, ...]]
    if has_details(table):
        now = time.time()
        rows = [
            (*_narrow(item), item.brand, list(item.tags), dict(item.attributes), now)
            for item in latest.values()
        ]
    else:
        rows = [_narrow(item) for item in latest.values()]
    columns = [c.name for c in table.columns]
    upsert(conn, table, rows, keys=["item_id"], columns=columns)


def _narrow(item: CatalogItem) -> tuple[Any, ...]:
    return (item.item_id, item.name, item.category, item.price, item.in_stock)


def load_items(conn: Connection, table: Table, item_ids: Iterable[str]) -> dict[str, CatalogItem]:
    wanted = list(dict.fromkeys(item_ids))
    found: dict[str, CatalogItem] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for row in conn.execute(select(table).where(table.c.item_id.in_(chunk))).mappings():
            found[row["item_id"]] = item_of(row)
    return found


def item_of(row: RowMapping) -> CatalogItem:
    """The item a row of either table holds (the narrow one has no brand, tags, attributes)."""
    return CatalogItem(
        item_id=row["item_id"],
        name=row["name"],
        category=row["category"],
        price=row["price"],
        in_stock=row["in_stock"],
        tags=list(row.get("tags") or []),
        brand=row.get("brand"),
        attributes=dict(row.get("attributes") or {}),
    )
