"""Where profiles live: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

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
    delete,
    func,
    inspect,
    select,
)

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import insert_ignore, make_engine, unseen, upsert
from services.common.events import AnyEvent, CatalogItem, EventType
from services.profiles import scoring
from services.profiles.domain import (
    CategoryStat,
    ManualTag,
    MemberProfile,
    RecentItem,
    apply_event,
    new_profile,
)
from services.profiles.scoring import Scoring
from services.profiles.settings import ProfilesSettings

# How long a store trusts the scoring it last read: another replica may have recomputed.
SCORING_TTL_S = 30.0


class TooManyTags(ValueError):
    """The member already has as many manual tags as the settings allow."""


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
        """The member's profile (with manual tags), or None when no event of theirs was
        ever applied."""

    @abc.abstractmethod
    def iter_profiles(
        self, after: str | None = None, batch: int = 500
    ) -> Iterator[MemberProfile]:
        """Every profile (with manual tags, without purchases), by member id, starting
        after `after`; reads `batch` members at a time, so memory stays flat."""

    @abc.abstractmethod
    def recompute_scoring(self, now: datetime) -> Scoring:
        """Compute the score boundaries and price distributions as of `now`, store them."""

    @abc.abstractmethod
    def scoring(self) -> Scoring | None:
        """The scoring last computed (by any replica), or None before the first one."""

    @property
    @abc.abstractmethod
    def orders_applied(self) -> int:
        """New orders this store object applied since it was made (for the schedule)."""

    @abc.abstractmethod
    def set_manual_tag(self, member_id: str, tag: str, at: datetime) -> list[ManualTag] | None:
        """Tag a known member (again: keeps the first `set_at`); their manual tags after,
        or None for a member with no events. TooManyTags past the limit."""

    @abc.abstractmethod
    def remove_manual_tag(self, member_id: str, tag: str) -> list[ManualTag] | None:
        """Remove a manual tag (none set is fine); the manual tags after, or None for a
        member with no events."""

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
    Column("first_order_at", DateTime(timezone=True)),
    Column("discounted_orders", Integer, nullable=False),
    # Events per channel, a JSON object (msgspec, like `recent`).
    Column("channels", Text, nullable=False),
)
member_categories = Table(
    "member_categories",
    metadata,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("category", String(128), primary_key=True),
    Column("weight", Float, nullable=False),
    Column("events", Integer, nullable=False),
    # Decayed weight as of affinity_at_s (the category's latest weighted event). Instants
    # in seconds since the epoch (UTC): no conversion on the consumer's hot path.
    Column("affinity", Float, nullable=False),
    Column("affinity_at_s", Float),
    Column("last_purchase_at_s", Float),
    Column("paid_units", Integer, nullable=False),
    Column("paid_amount", Float, nullable=False),
)
member_tags = Table(
    "member_tags",
    metadata,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("set_at", DateTime(timezone=True), nullable=False),
)
# One row, "current": the last scoring computed (scoring.Scoring as JSON).
portrait_scoring = Table(
    "portrait_scoring",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
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


class OutdatedStore(RuntimeError):
    """The database was made by an earlier recofleet, without the columns this one needs."""


class SqlProfileStore(ProfileStore):
    def __init__(self, engine: Engine, settings: ProfilesSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._half_life_s = settings.affinity_half_life_days * 86400
        self._orders_applied = 0
        self._scoring: Scoring | None = None
        self._scoring_read = float("-inf")
        _check_columns(engine)
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
                half_life_s=self._half_life_s,
            )
            if order in new_orders:
                self._orders_applied += 1
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
            profile.manual_tags = _manual_tags(conn, member_id)
            return profile

    def iter_profiles(
        self, after: str | None = None, batch: int = 500
    ) -> Iterator[MemberProfile]:
        while True:
            with self._engine.connect() as conn:
                query = select(members.c.member_id).order_by(members.c.member_id).limit(batch)
                if after is not None:
                    query = query.where(members.c.member_id > after)
                ids = list(conn.execute(query).scalars())
                if not ids:
                    return
                profiles = _load_members(conn, ids)
                tags = _manual_tags_of(conn, ids)
            for member_id in ids:
                profile = profiles[member_id]
                profile.manual_tags = tags.get(member_id, [])
                yield profile
            after = ids[-1]

    @property
    def orders_applied(self) -> int:
        return self._orders_applied

    def recompute_scoring(self, now: datetime) -> Scoring:
        window = self._settings.scoring_window_days
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(members.c.last_order_at, members.c.orders, members.c.spend).where(
                    members.c.orders > 0,
                    members.c.last_order_at >= now - timedelta(days=window),
                )
            )
            population = [
                (max((now - _utc(at)).total_seconds(), 0.0) / 86400, orders, spend)
                for at, orders, spend in rows
            ]
            computed = scoring.compute(
                computed_at=now,
                window_days=window,
                population=population,
                catalog_prices=_catalog_prices(conn),
                paid_prices=_paid_prices(conn),
            )
            upsert(
                conn,
                portrait_scoring,
                [("current", now, scoring.encode(computed))],
                keys=["name"],
            )
        self._scoring, self._scoring_read = computed, time.monotonic()
        return computed

    def scoring(self) -> Scoring | None:
        if time.monotonic() - self._scoring_read > SCORING_TTL_S:
            with self._engine.connect() as conn:
                body = conn.execute(
                    select(portrait_scoring.c.body).where(portrait_scoring.c.name == "current")
                ).scalar()
            self._scoring = scoring.decode(body) if body else None
            self._scoring_read = time.monotonic()
        return self._scoring

    def set_manual_tag(self, member_id: str, tag: str, at: datetime) -> list[ManualTag] | None:
        with self._engine.begin() as conn:
            if not _known(conn, member_id):
                return None
            tags = _manual_tags(conn, member_id)
            if any(t.tag == tag for t in tags):
                return tags
            if len(tags) >= self._settings.max_manual_tags:
                raise TooManyTags(
                    f"member '{member_id}' has {len(tags)} manual tags, the most allowed"
                )
            insert_ignore(conn, member_tags, [(member_id, tag, at)])
            return _manual_tags(conn, member_id)

    def remove_manual_tag(self, member_id: str, tag: str) -> list[ManualTag] | None:
        with self._engine.begin() as conn:
            if not _known(conn, member_id):
                return None
            conn.execute(
                delete(member_tags).where(
                    member_tags.c.member_id == member_id, member_tags.c.tag == tag
                )
            )
            return _manual_tags(conn, member_id)

    def close(self) -> None:
        self._engine.dispose()


def _check_columns(engine: Engine) -> None:
    """Refuse a database an earlier recofleet made: create_all adds tables, not columns."""
    found = inspect(engine)
    for table in (members, member_categories):
        if not found.has_table(table.name):
            continue
        have = {column["name"] for column in found.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in have]
        if missing:
            raise OutdatedStore(
                f"the profiles store ({engine.url.render_as_string(hide_password=True)}) was "
                f"made by an earlier recofleet: table {table.name} lacks {', '.join(missing)}. "
                "Recreate the data dir (rm -rf var, or a new RECOFLEET_DATA_DIR) and load "
                "again; schema migrations are not supported yet (docs/portraits.md)."
            )


def _known(conn: Connection, member_id: str) -> bool:
    found = conn.execute(select(members.c.member_id).where(members.c.member_id == member_id))
    return found.first() is not None


def _manual_tags(conn: Connection, member_id: str) -> list[ManualTag]:
    rows = conn.execute(
        select(member_tags.c.tag, member_tags.c.set_at)
        .where(member_tags.c.member_id == member_id)
        .order_by(member_tags.c.tag)
    )
    return [ManualTag(tag, _utc(set_at)) for tag, set_at in rows]


def _manual_tags_of(conn: Connection, member_ids: list[str]) -> dict[str, list[ManualTag]]:
    found: dict[str, list[ManualTag]] = {}
    rows = conn.execute(
        select(member_tags.c.member_id, member_tags.c.tag, member_tags.c.set_at)
        .where(member_tags.c.member_id.in_(member_ids))
        .order_by(member_tags.c.member_id, member_tags.c.tag)
    )
    for member_id, tag, set_at in rows:
        found.setdefault(member_id, []).append(ManualTag(tag, _utc(set_at)))
    return found


def _catalog_prices(conn: Connection) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    rows = conn.execute(
        select(catalog.c.category, catalog.c.price).where(
            catalog.c.category.is_not(None), catalog.c.price > 0
        )
    )
    for category, price in rows:
        found.setdefault(category, []).append(float(price))
    return found


def _paid_prices(conn: Connection) -> dict[str, list[float]]:
    """Per category, every member's mean paid unit price in it."""
    found: dict[str, list[float]] = {}
    rows = conn.execute(
        select(
            member_categories.c.category,
            (member_categories.c.paid_amount / func.nullif(member_categories.c.paid_units, 0)),
        ).where(member_categories.c.paid_units > 0)
    )
    for category, price in rows:
        if price is not None:
            found.setdefault(category, []).append(float(price))
    return found


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
                first_order_at=_utc(row.first_order_at) if row.first_order_at else None,
                discounted_orders=row.discounted_orders,
                channels=_read_channels(row.channels),
            )
        # Plain tuples in CategoryStat's field order: members have a row per category, and
        # a batch reads thousands of them.
        rows = conn.execute(
            select(member_categories).where(member_categories.c.member_id.in_(chunk))
        )
        for member_id, category, *stat in rows:
            profiles[member_id].categories[category] = CategoryStat(*stat)
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
            p.first_order_at,
            p.discounted_orders,
            _write_channels(p.channels),
        )
        for p in profiles
    ]
    upsert(conn, members, rows, keys=["member_id"])
    by_id = {p.member_id: p for p in profiles}
    stats = [
        (
            member_id,
            category,
            stat.weight,
            stat.events,
            stat.affinity,
            stat.affinity_at_s,
            stat.last_purchase_at_s,
            stat.paid_units,
            stat.paid_amount,
        )
        for member_id, category in sorted(touched)
        for stat in [by_id[member_id].categories[category]]
    ]
    upsert(conn, member_categories, stats, keys=["member_id", "category"])


_read_recent = msgspec.json.Decoder(list[RecentItem]).decode
_recent_encoder = msgspec.json.Encoder()


def _write_recent(recent: list[RecentItem]) -> str:
    return _recent_encoder.encode(recent).decode("utf-8")


_read_channels = msgspec.json.Decoder(dict[str, int]).decode


def _write_channels(channels: dict[str, int]) -> str:
    return _recent_encoder.encode(channels).decode("utf-8") if channels else "{}"


def _save_purchases(conn: Connection, events: list[AnyEvent]) -> None:
    rows = {
        (e.member_id, line.item_id)
        for e in events
        if e.type == EventType.PURCHASE
        for line in e.lines()
    }
    insert_ignore(conn, member_purchases, list(rows))
