"""Where profiles live: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import insert_ignore, make_engine, unseen, upsert
from services.common.events import AnyEvent, CatalogItem, EventType
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
    def apply_events(self, events: Sequence[AnyEvent]) -> int:
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
    # The latest items, newest first, capped: read with the member, rewritten with it. A
    # JSON array of [item_id, event_type, at] kept as text: a profiles batch reads and
    # writes thousands of these, and msgspec does that several times faster than the
    # JSON type's json module.
    Column("recent", Text, nullable=False),
)
member_categories = Table(
    "member_categories",
    metadata,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("category", String(128), primary_key=True),
    Column("weight", Float, nullable=False),
    Column("events", Integer, nullable=False),
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

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        with self._engine.begin() as conn:
            todo = _unapplied(conn, events)
            if not todo:
                return 0
            insert_ignore(conn, processed_events, [(e.event_id,) for e in todo])
            self._apply(conn, todo)
        return len(todo)

    def _apply(self, conn: Connection, events: list[AnyEvent]) -> None:
        profiles = _load_members(conn, list(dict.fromkeys(e.member_id for e in events)))
        uncategorized = {line.item_id for e in events for line in e.lines() if not line.category}
        item_categories = {
            item_id: item.category
            for item_id, item in load_items(conn, catalog, uncategorized).items()
            if item.category
        }
        new_orders = _new_orders(conn, events)
        touched: set[tuple[str, str]] = set()
        for event in events:
            profile = profiles.get(event.member_id) or new_profile(event)
            profiles[event.member_id] = profile
            order = (event.member_id, _order_key(event))
            categories = apply_event(
                profile,
                event,
                item_categories=item_categories,
                weights=self._settings.category_weights,
                new_order=order in new_orders,
                keep_recent=self._settings.recent_items,
            )
            new_orders.discard(order)
            touched.update((event.member_id, c) for c in categories)
        _save_members(conn, list(profiles.values()), touched)
        _save_purchases(conn, events)

    def save_catalog(self, items: Sequence[CatalogItem]) -> None:
        with self._engine.begin() as conn:
            save_items(conn, catalog, items)

    def get(self, member_id: str, recent_limit: int = 20) -> MemberProfile | None:
        with self._engine.connect() as conn:
            profile = _load_members(conn, [member_id]).get(member_id)
            if profile is None:
                return None
            profile.recent = profile.recent[:recent_limit]
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


def _unapplied(conn: Connection, events: Sequence[AnyEvent]) -> list[AnyEvent]:
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


def _order_key(event: AnyEvent) -> str:
    # A purchase without an order id is an order of its own.
    return event.order_id or f"event:{event.event_id}"


def _new_orders(conn: Connection, events: list[AnyEvent]) -> set[tuple[str, str]]:
    wanted = {(e.member_id, _order_key(e)) for e in events if e.type == EventType.PURCHASE}
    known: set[tuple[str, str]] = set()
    order_ids = list({order_id for _, order_id in wanted})
    for start in range(0, len(order_ids), 500):
        rows = conn.execute(
            select(member_orders.c.member_id, member_orders.c.order_id).where(
                member_orders.c.order_id.in_(order_ids[start : start + 500])
            )
        )
        known.update((member_id, order_id) for member_id, order_id in rows)
    fresh = wanted - known
    insert_ignore(conn, member_orders, list(fresh))
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
                recent=_read_recent(row.recent),
            )
        for row in conn.execute(
            select(member_categories).where(member_categories.c.member_id.in_(chunk))
        ):
            profiles[row.member_id].categories[row.category] = CategoryStat(row.weight, row.events)
    return profiles


def _save_members(
    conn: Connection, profiles: list[MemberProfile], touched: set[tuple[str, str]]
) -> None:
    rows = [
        (
            p.member_id,
            p.first_seen,
            p.last_seen,
            p.last_order_at,
            p.orders,
            p.spend,
            p.events,
            _write_recent(p.recent),
        )
        for p in profiles
    ]
    upsert(conn, members, rows, keys=["member_id"])
    by_id = {p.member_id: p for p in profiles}
    stats = [
        (member_id, category, stat.weight, stat.events)
        for member_id, category in sorted(touched)
        for stat in [by_id[member_id].categories[category]]
    ]
    upsert(conn, member_categories, stats, keys=["member_id", "category"])


_read_recent = msgspec.json.Decoder(list[RecentItem]).decode
_recent_encoder = msgspec.json.Encoder()


def _write_recent(recent: list[RecentItem]) -> str:
    return _recent_encoder.encode(recent).decode("utf-8")


def _save_purchases(conn: Connection, events: list[AnyEvent]) -> None:
    rows = {
        (e.member_id, line.item_id)
        for e in events
        if e.type == EventType.PURCHASE
        for line in e.lines()
    }
    insert_ignore(conn, member_purchases, list(rows))
