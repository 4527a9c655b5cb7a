"""Interactions retrieval learns from, kept from the event bus (interface and SQL store)."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    select,
)

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import insert_ignore, make_engine
from services.common.events import AnyEvent, CatalogItem


@dataclass(frozen=True)
class Interaction:
    member_id: str
    item_id: str
    weight: float


class InteractionStore(abc.ABC):
    @abc.abstractmethod
    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        """Record the weighted interactions of events not recorded before; return how many
        interactions were new."""

    @abc.abstractmethod
    def save_catalog(self, items: Sequence[CatalogItem]) -> None: ...

    @abc.abstractmethod
    def categories(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Category of each known item."""

    @abc.abstractmethod
    def member_history(self, member_id: str, limit: int) -> dict[str, float]:
        """The member's latest interactions, summed per item."""

    @abc.abstractmethod
    def interactions(self) -> Iterator[Interaction]:
        """Every interaction, summed per member and item (the training data)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the training data does."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
interactions = Table(
    "interactions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False),
    Column("line", Integer, nullable=False),
    Column("member_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("weight", Float, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # One row per line of an event: a redelivered event inserts nothing.
    UniqueConstraint("event_id", "line", name="uq_interactions_event_line"),
    Index("ix_interactions_member", "member_id", "id"),
)
catalog = catalog_table(metadata)
# What a consumer writes: every column but the id the database numbers.
_INTERACTION_COLUMNS = ("event_id", "line", "member_id", "item_id", "event_type", "weight", "at")


class SqlInteractionStore(InteractionStore):
    def __init__(self, engine: Engine, weights: Mapping[str, float]) -> None:
        self._engine = engine
        self._weights = dict(weights)
        metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str, weights: Mapping[str, float]) -> SqlInteractionStore:
        return cls(make_engine(url), weights)

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        rows = [row for event in events for row in self._rows(event)]
        with self._engine.begin() as conn:
            return insert_ignore(conn, interactions, rows, _INTERACTION_COLUMNS)

    def _rows(self, event: AnyEvent) -> list[tuple[object, ...]]:
        weight = self._weights.get(event.type.value, 0.0)
        if weight <= 0:
            return []
        return [
            (
                event.event_id,
                line_no,
                event.member_id,
                line.item_id,
                event.type.value,
                weight,
                event.timestamp,
            )
            for line_no, line in enumerate(event.lines())
        ]

    def save_catalog(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)

    def categories(self, item_ids: Sequence[str]) -> dict[str, str]:
        with self._engine.connect() as conn:
            found = load_items(conn, catalog, item_ids)
        return {item_id: item.category for item_id, item in found.items() if item.category}

    def member_history(self, member_id: str, limit: int) -> dict[str, float]:
        latest = (
            select(interactions.c.item_id, interactions.c.weight)
            .where(interactions.c.member_id == member_id)
            .order_by(interactions.c.id.desc())
            .limit(limit)
            .subquery()
        )
        query = select(latest.c.item_id, func.sum(latest.c.weight)).group_by(latest.c.item_id)
        with self._engine.connect() as conn:
            return {item_id: float(weight) for item_id, weight in conn.execute(query)}

    def interactions(self) -> Iterator[Interaction]:
        query = select(
            interactions.c.member_id, interactions.c.item_id, func.sum(interactions.c.weight)
        ).group_by(interactions.c.member_id, interactions.c.item_id)
        with self._engine.connect() as conn:
            for member_id, item_id, weight in conn.execute(query):
                yield Interaction(member_id, item_id, float(weight))

    def fingerprint(self) -> str:
        with self._engine.connect() as conn:
            count, last = conn.execute(
                select(func.count(), func.max(interactions.c.id)).select_from(interactions)
            ).one()
        return f"{count}:{last or 0}"

    def close(self) -> None:
        self._engine.dispose()
