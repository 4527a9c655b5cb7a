"""What campaigns keeps: its copy of the catalog (from the catalog topic) and the
merchandising rules.

Both are read on every recommendation, so both are also in memory: the catalog's facts in
columns (`CatalogFacts`), the rules in the servicer (services/campaigns/merch_servicer.py).
The store is the truth every replica reads again.
"""

from __future__ import annotations

import abc
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.campaigns.merchandising import ItemFacts, Selector
from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import make_engine
from services.common.events import CatalogItem
from services.common.migrations import upgrade

# Rows whose change is this recent are read again at every refresh: a row written by
# another replica commits a moment after the instant it carries, and their clocks differ.
CHANGE_OVERLAP_S = 5.0


@dataclass(frozen=True)
class StoredRule:
    rule_id: str
    placement: str
    # The whole rule as JSON-ready values (services/campaigns/merchandising.py validates it).
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class CatalogStore(abc.ABC):
    @abc.abstractmethod
    def save(self, items: Sequence[CatalogItem]) -> None: ...

    @abc.abstractmethod
    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        """Those of the items the catalog says are not in stock. From memory: it is asked
        on every recommendation."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Read the stock and what changed in the catalog again from the store, for what
        other replicas saved."""

    @abc.abstractmethod
    def facts(self) -> CatalogFacts:
        """Every item's category, price, stock, brand and tags, in memory (for rules)."""

    @abc.abstractmethod
    def item(self, item_id: str) -> CatalogItem | None:
        """The item as the catalog holds it (tags, brand and attributes included)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class RuleStore(abc.ABC):
    @abc.abstractmethod
    def put_rule(self, rule_id: str, placement: str, definition: dict[str, Any]) -> StoredRule:
        """Create the rule, or replace its definition (its creation time stays)."""

    @abc.abstractmethod
    def rule(self, rule_id: str) -> StoredRule | None: ...

    @abc.abstractmethod
    def rules(self, placement: str = "") -> list[StoredRule]:
        """Every rule (of the placement, when given), oldest first."""

    @abc.abstractmethod
    def delete_rule(self, rule_id: str) -> bool:
        """Whether there was such a rule."""

    @abc.abstractmethod
    def count_rules(self) -> int: ...


class MerchandisingStore(CatalogStore, RuleStore, abc.ABC):
    """The catalog and the rules: what merchandising reads and writes."""


metadata = MetaData()
catalog = catalog_table(metadata, with_details=True)
rules = Table(
    "merchandising_rules",
    metadata,
    Column("rule_id", String(64), primary_key=True),
    Column("placement", String(64), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_merchandising_rules_placement", rules.c.placement)


class SqlCatalogStore(MerchandisingStore):
    """The catalog and the rules in SQL. In memory too: the ids of the items out of stock
    (few, next to the catalog) and every item's facts, updated by each save and by
    `refresh`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        upgrade(engine, "campaigns")
        self._sold_out: frozenset[str] = frozenset()
        self._facts = CatalogFacts()
        # When (epoch seconds, this process's clock) the last read began; None before the
        # first read (all rows).
        self._read_up_to: float | None = None
        self.refresh()

    @classmethod
    def from_url(cls, url: str) -> SqlCatalogStore:
        return cls(make_engine(url))

    def save(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)
        latest = {item.item_id: item for item in items}
        back = {item_id for item_id, item in latest.items() if item.in_stock}
        gone = {item_id for item_id, item in latest.items() if not item.in_stock}
        # One assignment: a request reading the set meanwhile sees the old or the new one.
        self._sold_out = (self._sold_out - back) | gone
        self._facts.update(latest.values())

    def out_of_stock(self, item_ids: Sequence[str]) -> set[str]:
        sold_out = self._sold_out
        return {item_id for item_id in item_ids if item_id in sold_out}

    def refresh(self) -> None:
        # Changes are stamped with their writer's clock (services/common/catalog.py): what
        # committed since the last read carries at least its start, less the overlap. Not
        # the newest stamp read: a batch would then be read again every second until the
        # next change (a whole catalog after a full sync).
        started = time.time()
        stock = select(catalog.c.item_id).where(catalog.c.in_stock.is_(False))
        changed = select(*(catalog.c[name] for name in FACTS))
        if self._read_up_to is not None:
            # Rows without a change time (written before it existed) were read the first time.
            changed = changed.where(catalog.c.changed_at_s >= self._read_up_to - CHANGE_OVERLAP_S)
        with self._engine.connect() as conn:
            sold_out = frozenset(conn.execute(stock).scalars())
            rows = conn.execute(changed).mappings().all()
        self._facts.update(_facts_of(row) for row in rows)
        # Rows a release without change times wrote since are found by their stock here.
        self._facts.restock(sold_out)
        self._sold_out = sold_out
        self._read_up_to = started

    def facts(self) -> CatalogFacts:
        return self._facts

    def item(self, item_id: str) -> CatalogItem | None:
        with self._engine.connect() as conn:
            return load_items(conn, catalog, [item_id]).get(item_id)

    def put_rule(self, rule_id: str, placement: str, definition: dict[str, Any]) -> StoredRule:
        now = datetime.now(UTC)
        values = {"placement": placement, "definition": definition, "updated_at": now}
        try:
            return self._put(rule_id, values, now)
        except IntegrityError:
            # Another replica created it meanwhile: this write replaces that one.
            return self._put(rule_id, values, now)

    def _put(self, rule_id: str, values: dict[str, Any], now: datetime) -> StoredRule:
        with self._engine.begin() as conn:
            changed = conn.execute(update(rules).where(rules.c.rule_id == rule_id).values(values))
            if changed.rowcount == 0:
                conn.execute(insert(rules).values(rule_id=rule_id, created_at=now, **values))
            row = conn.execute(select(rules).where(rules.c.rule_id == rule_id)).mappings().one()
        return _stored(row)

    def rule(self, rule_id: str) -> StoredRule | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(rules).where(rules.c.rule_id == rule_id)).mappings().first()
        return _stored(row) if row else None

    def rules(self, placement: str = "") -> list[StoredRule]:
        query = select(rules).order_by(rules.c.created_at, rules.c.rule_id)
        if placement:
            query = query.where(rules.c.placement == placement)
        with self._engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query).mappings()]

    def delete_rule(self, rule_id: str) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(delete(rules).where(rules.c.rule_id == rule_id)).rowcount > 0

    def count_rules(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(rules)).scalar_one())

    def close(self) -> None:
        self._engine.dispose()


# What the facts in memory are made of: every column but the name and the attributes.
FACTS = ("item_id", "category", "price", "in_stock", "brand", "tags")


def _facts_of(row: Any) -> CatalogItem:
    # Validated when it was saved: constructed, since a big catalog is read whole at start.
    return CatalogItem.model_construct(
        item_id=row["item_id"],
        category=row["category"],
        price=row["price"],
        in_stock=row["in_stock"],
        brand=row["brand"],
        tags=row["tags"] or [],
    )


def _stored(row: Any) -> StoredRule:
    return StoredRule(
        rule_id=row["rule_id"],
        placement=row["placement"],
        definition=dict(row["definition"]),
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Codes:
    """Words (categories, brands) as small numbers: each item holds a number, not a string."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {"": 0}
        self.word: list[str] = [""]

    def of(self, word: str) -> int:
        found = self.code.get(word)
        if found is None:
            # The word before its code: a reader that finds the code finds the word.
            found = len(self.word)
            self.word.append(word)
            self.code[word] = found
        return found

    def known(self, words: Iterable[str]) -> list[int]:
        return [self.code[w] for w in words if w in self.code]


class CatalogFacts:
    """Every item's category, price, stock, brand and tags, kept in columns.

    A big shop has 250k items: one Python object per item and fact would take hundreds of
    bytes each, so each fact is a numpy column indexed by the item's row, categories and
    brands as codes, and each item's tags as the code of its set of tags (items share few
    distinct sets). Selecting every item of a category or a tag is a vectorised scan.

    One writer at a time (the catalog consumer and the refresh, under a lock); requests read
    without it: a column is replaced whole when it grows, and a new row is written before
    its id is published, so a reader sees an item's old facts or its new ones.
    """

    def __init__(self, items: Iterable[CatalogItem] = ()) -> None:
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        self._size = 0
        self._categories = _Codes()
        self._brands = _Codes()
        self._tag_sets: dict[frozenset[str], int] = {frozenset(): 0}
        self._tag_set: list[frozenset[str]] = [frozenset()]
        self._category = np.zeros(0, np.int32)
        self._brand = np.zeros(0, np.int32)
        self._tags = np.zeros(0, np.int32)
        self._price = np.zeros(0, np.float64)
        self._stock = np.zeros(0, np.bool_)
        self._lock = threading.Lock()
        self.update(items)

    def __len__(self) -> int:
        return self._size

    def in_stock(self) -> list[str]:
        """The ids of the items in stock, in catalog order."""
        size = self._size
        return [self._ids[row] for row in np.flatnonzero(self._stock[:size])]

    def update(self, items: Iterable[CatalogItem]) -> None:
        with self._lock:
            for item in items:
                self._write(item)

    def _write(self, item: CatalogItem) -> None:
        row = self._rows.get(item.item_id)
        if row is None:
            row = self._size
            self._grow(row + 1)
        self._category[row] = self._categories.of(item.category or "")
        self._brand[row] = self._brands.of(item.brand or "")
        self._tags[row] = self._tag_set_of(frozenset(item.tags))
        self._price[row] = np.nan if item.price is None else item.price
        self._stock[row] = item.in_stock
        if item.item_id not in self._rows:
            self._ids.append(item.item_id)
            self._rows[item.item_id] = row
            self._size = row + 1

    def _grow(self, size: int) -> None:
        if size <= len(self._category):
            return
        capacity = max(1024, 2 * len(self._category), size)
        self._category = _grown(self._category, capacity)
        self._brand = _grown(self._brand, capacity)
        self._tags = _grown(self._tags, capacity)
        self._price = _grown(self._price, capacity)
        self._stock = _grown(self._stock, capacity)

    def _tag_set_of(self, tags: frozenset[str]) -> int:
        found = self._tag_sets.get(tags)
        if found is None:
            found = len(self._tag_set)
            self._tag_set.append(tags)
            self._tag_sets[tags] = found
        return found

    def restock(self, sold_out: frozenset[str]) -> None:
        """Make the stock column say what the store says: only `sold_out` are not in stock."""
        with self._lock:
            stock = np.ones(len(self._stock), np.bool_)
            rows = [self._rows[i] for i in sold_out if i in self._rows]
            stock[rows] = False
            self._stock = stock

    def facts(self, item_id: str) -> ItemFacts | None:
        row = self._rows.get(item_id)
        if row is None:
            return None
        price = float(self._price[row])
        return ItemFacts(
            category=self._categories.word[self._category[row]],
            price=None if math.isnan(price) else price,
            in_stock=bool(self._stock[row]),
            brand=self._brands.word[self._brand[row]],
            tags=self._tag_set[self._tags[row]],
        )

    def matching(self, selector: Selector, count: int, admit: Callable[[str], bool]) -> list[str]:
        size = self._size
        mask = self._stock[:size].copy()
        if selector.categories:
            mask &= np.isin(self._category[:size], self._categories.known(selector.categories))
        if selector.brands:
            mask &= np.isin(self._brand[:size], self._brands.known(selector.brands))
        if selector.tags:
            sets = [n for n, tags in enumerate(self._tag_set) if tags & selector.tags]
            mask &= np.isin(self._tags[:size], sets)
        prices = self._price[:size]
        if selector.min_price is not None:
            mask &= prices >= selector.min_price
        if selector.max_price is not None:
            mask &= prices <= selector.max_price
        found: list[str] = []
        for row in np.flatnonzero(mask):
            item_id = self._ids[row]
            if admit(item_id):
                found.append(item_id)
                if len(found) == count:
                    break
        return found


def _grown(column: np.ndarray[Any, Any], capacity: int) -> np.ndarray[Any, Any]:
    grown = np.zeros(capacity, column.dtype)
    grown[: len(column)] = column
    return grown
