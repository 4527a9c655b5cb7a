"""Where profiles live: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from __future__ import annotations

import abc
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    select,
)

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import insert_ignore, make_engine, unseen, upsert
from services.common.events import CatalogItem, Event, EventType
from services.profiles.domain import (
    CategoryStat,
    MemberProfile,
    RecentItem,
    apply_event,
    new_profile,
)
from services.profiles.settings import ProfilesSettings


class ProfileStore(abc.ABC):
    """Applies events to profiles exactly once per event id and reads profiles back."""

    @abc.abstractmethod
    def apply_events(self, events: Sequence[Event]) -> int:
        """Apply the events not applied before (by event_id), atomically; return how many."""

    @abc.abstractmethod
    def save_catalog(self, items: Sequence[CatalogItem]) -> None:
        """Remember item categories, for events that do not carry them."""

    @abc.abstractmethod
    def get(self, member_id: str, recent_limit: int = 20) -> MemberProfile | None:
        """The member's profile, or None when no event of theirs was ever applied."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
members = Table(
    "members",
    metadata,
    Column("member_id", String(128), primary_key=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("last_order_at", DateTime(timezone=True)),
    Column("orders", Integer, nullable=False),
    Column("spend", Float, nullable=False),
    Column("events", Integer, nullable=False),
)
member_categories = Table(
    "member_categories",
    metadata,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("category", String(128), primary_key=True),
    Column("weight", Float, nullable=False),
    Column("events", Integer, nullable=False),
)
member_recent = Table(
    "member_recent",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_member_recent_member_at", "member_id", "at"),
)
member_purchases = Table(
    "member_purchases",
    metadata,
    Column("member_id", String(128), primary_key=True),
    Column("item_id", String(128), primary_key=True),
)
member_orders = Table(
    "member_orders",
    metadata,
    Column("member_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
)
processed_events = Table(
    "processed_events", metadata, Column("event_id", String(128), primary_key=True)
)
catalog = catalog_table(metadata)


class SqlProfileStore(ProfileStore):
    def __init__(self, engine: Engine, settings: ProfilesSettings) -> None:
        self._engine = engine
        self._settings = settings
        metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str, settings: ProfilesSettings) -> SqlProfileStore:
        return cls(make_engine(url), settings)

    def apply_events(self, events: Sequence[Event]) -> int:
        with self._engine.begin() as conn:
            todo = _unapplied(conn, events)
            if not todo:
                return 0
            insert_ignore(conn, processed_events, [{"event_id": e.event_id} for e in todo])
            self._apply(conn, todo)
        return len(todo)

    def _apply(self, conn: Connection, events: list[Event]) -> None:
        member_ids = list(dict.fromkeys(e.member_id for e in events))
        profiles = _load_members(conn, member_ids)
        uncategorized = {line.item_id for e in events for line in e.lines() if not line.category}
        item_categories = {
            item_id: item.category
            for item_id, item in load_items(conn, catalog, uncategorized).items()
            if item.category
        }
        new_orders = _new_orders(conn, events)
        recent_of: dict[str, list[RecentItem]] = defaultdict(list)
        for event in events:
            profile = profiles.get(event.member_id) or new_profile(event)
            profiles[event.member_id] = profile
            added = apply_event(
                profile,
                event,
                item_categories=item_categories,
                weights=self._settings.category_weights,
                new_order=(event.member_id, _order_key(event)) in new_orders,
            )
            new_orders.discard((event.member_id, _order_key(event)))
            recent_of[event.member_id].extend(added)
        _save_members(conn, list(profiles.values()))
        _save_recent(conn, recent_of, self._settings.recent_items)
        _save_purchases(conn, events)

    def save_catalog(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)

    def get(self, member_id: str, recent_limit: int = 20) -> MemberProfile | None:
        with self._engine.connect() as conn:
            profile = _load_members(conn, [member_id]).get(member_id)
            if profile is None:
                return None
            profile.recent = [
                RecentItem(row.item_id, row.event_type, _utc(row.at))
                for row in conn.execute(
                    select(member_recent)
                    .where(member_recent.c.member_id == member_id)
                    .order_by(member_recent.c.at.desc(), member_recent.c.id.desc())
                    .limit(recent_limit)
                )
            ]
            profile.purchased = list(
                conn.execute(
                    select(member_purchases.c.item_id)
                    .where(member_purchases.c.member_id == member_id)
                    .order_by(member_purchases.c.item_id)
                ).scalars()
            )
            return profile

    def close(self) -> None:
        self._engine.dispose()


def _unapplied(conn: Connection, events: Sequence[Event]) -> list[Event]:
    """The events whose id was never applied, each id once (a batch may repeat one)."""
    fresh = set(unseen(conn, processed_events.c.event_id, [e.event_id for e in events]))
    todo = []
    for event in events:
        if event.event_id in fresh:
            fresh.remove(event.event_id)
            todo.append(event)
    return todo


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _order_key(event: Event) -> str:
    # A purchase without an order id is an order of its own.
    return event.order_id or f"event:{event.event_id}"


def _new_orders(conn: Connection, events: list[Event]) -> set[tuple[str, str]]:
    wanted = {(e.member_id, _order_key(e)) for e in events if e.type == EventType.PURCHASE}
    if not wanted:
        return set()
    by_member: dict[str, set[str]] = defaultdict(set)
    for member_id, order_id in wanted:
        by_member[member_id].add(order_id)
    known: set[tuple[str, str]] = set()
    for member_id, order_ids in by_member.items():
        rows = conn.execute(
            select(member_orders.c.order_id).where(
                member_orders.c.member_id == member_id,
                member_orders.c.order_id.in_(order_ids),
            )
        ).scalars()
        known.update((member_id, order_id) for order_id in rows)
    fresh = wanted - known
    insert_ignore(conn, member_orders, [{"member_id": m, "order_id": o} for m, o in fresh])
    return fresh


def _load_members(conn: Connection, member_ids: list[str]) -> dict[str, MemberProfile]:
    profiles: dict[str, MemberProfile] = {}
    for start in range(0, len(member_ids), 500):
        chunk = member_ids[start : start + 500]
        for row in conn.execute(select(members).where(members.c.member_id.in_(chunk))):
            profiles[row.member_id] = MemberProfile(
                member_id=row.member_id,
                first_seen=_utc(row.first_seen),
                last_seen=_utc(row.last_seen),
                last_order_at=_utc(row.last_order_at) if row.last_order_at else None,
                orders=row.orders,
                spend=row.spend,
                events=row.events,
            )
        for row in conn.execute(
            select(member_categories).where(member_categories.c.member_id.in_(chunk))
        ):
            profiles[row.member_id].categories[row.category] = CategoryStat(row.weight, row.events)
    return profiles


def _save_members(conn: Connection, profiles: list[MemberProfile]) -> None:
    upsert(
        conn,
        members,
        [
            {
                "member_id": p.member_id,
                "first_seen": p.first_seen,
                "last_seen": p.last_seen,
                "last_order_at": p.last_order_at,
                "orders": p.orders,
                "spend": p.spend,
                "events": p.events,
            }
            for p in profiles
        ],
        keys=["member_id"],
    )
    rows = [
        {"member_id": p.member_id, "category": name, "weight": stat.weight, "events": stat.events}
        for p in profiles
        for name, stat in p.categories.items()
    ]
    upsert(conn, member_categories, rows, keys=["member_id", "category"])


def _save_recent(conn: Connection, recent_of: dict[str, list[RecentItem]], keep: int) -> None:
    rows = [
        {"member_id": m, "item_id": r.item_id, "event_type": r.event_type, "at": r.at}
        for m, items in recent_of.items()
        for r in items
    ]
    if rows:
        conn.execute(member_recent.insert(), rows)
    for member_id in recent_of:
        newest = (
            select(member_recent.c.id)
            .where(member_recent.c.member_id == member_id)
            .order_by(member_recent.c.at.desc(), member_recent.c.id.desc())
            .limit(keep)
        )
        conn.execute(
            delete(member_recent).where(
                member_recent.c.member_id == member_id,
                member_recent.c.id.not_in(newest.scalar_subquery()),
            )
        )


def _save_purchases(conn: Connection, events: list[Event]) -> None:
    rows = {
        (e.member_id, line.item_id)
        for e in events
        if e.type == EventType.PURCHASE
        for line in e.lines()
    }
    insert_ignore(conn, member_purchases, [{"member_id": m, "item_id": i} for m, i in rows])
