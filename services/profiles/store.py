"""Where profiles live: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import msgspec
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql import CompoundSelect, Select

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import (
    insert_ignore,
    is_embedded,
    make_engine,
    scrub_freed,
    upsert,
)
from services.common.events import AnyEvent, CatalogItem, EventType
from services.common.members import (
    CONSENT_KEYS,
    Consent,
    Erase,
    Link,
    MemberCommand,
    erased_since,
    erasures_table,
    followed,
    forget_links,
    links_table,
    member_digest,
    record_erasure,
    resolve_links,
    save_link,
    unapplied,
)
from services.common.migrations import upgrade
from services.profiles import scoring
from services.profiles.domain import (
    CategoryStat,
    ManualTag,
    MemberProfile,
    RecentItem,
    apply_event,
    merge_profiles,
    new_profile,
)
from services.profiles.scoring import Scoring
from services.profiles.segments import SegmentDefinition
from services.profiles.settings import ProfilesSettings

# How long a store trusts the scoring it last read: another replica may have recomputed.
SCORING_TTL_S = 30.0


class TooManyTags(ValueError):
    """The member already has as many manual tags as the settings allow."""


class ProfileStore(abc.ABC):
    """Applies events to profiles exactly once per event id and reads profiles back."""

    # Reads are local and never wait on a server (an embedded database).
    embedded: bool = False

    @abc.abstractmethod
    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        """Apply the events not applied before (by event_id), atomically; return how many."""

    @abc.abstractmethod
    def save_catalog(self, items: Sequence[CatalogItem]) -> None:
        """Remember item categories, for events that do not carry them."""

    @abc.abstractmethod
    def get(
        self, member_id: str, recent_limit: int = 20, purchases: bool = True
    ) -> MemberProfile | None:
        """The member's profile (with manual tags; with the items they bought unless not
        `purchases`), or None when no event of theirs was ever applied."""

    @abc.abstractmethod
    def iter_profiles(self, after: str | None = None, batch: int = 500) -> Iterator[MemberProfile]:
        """Every profile (with manual tags, without purchases), by member id, starting
        after `after`; reads `batch` members at a time, so memory stays flat."""

    @abc.abstractmethod
    def count_members(self) -> int:
        """How many members the store holds (each with an event of theirs applied)."""

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
    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        """Apply members-topic commands in order: erase (everything keyed by the member and
        their linked visitors goes; a tombstone stays), link (a visitor's profile merges
        into the member's, once), consent. Applying one again changes nothing."""

    @abc.abstractmethod
    def set_consent(
        self, member_id: str, changes: Mapping[str, bool], at: datetime
    ) -> tuple[dict[str, bool], datetime]:
        """Record consent choices (known member or not); all the member's choices after,
        and when they changed."""

    @abc.abstractmethod
    def consent_choices(self, member_id: str) -> tuple[dict[str, bool], datetime | None]:
        """The member's own choices (no defaults) and when they last changed."""

    @abc.abstractmethod
    def segments(self) -> list[SegmentDefinition]:
        """The custom segments, by name."""

    @abc.abstractmethod
    def put_segment(
        self, definition: SegmentDefinition, at: datetime, create_only: bool = False
    ) -> SegmentDefinition:
        """Create or replace a custom segment; as saved. SegmentExists when `create_only`
        and the name is taken; TooManySegments past the limit."""

    @abc.abstractmethod
    def delete_segment(self, name: str) -> bool:
        """Remove a custom segment and its size history; whether it existed."""

    @abc.abstractmethod
    def record_sizes(self, day: date, sizes: Mapping[str, int], keep_days: int) -> None:
        """Keep `sizes` as the segments' sizes on `day` (a later count that day replaces
        them), and forget sizes older than `keep_days` before it."""

    @abc.abstractmethod
    def size_history(self, since: date) -> dict[str, list[tuple[date, int]]]:
        """Each segment's recorded sizes from `since` on, oldest first."""

    @abc.abstractmethod
    def prune_processed(self, before: datetime) -> int:
        """Forget the ids of events applied before `before` (wall-clock time): an event
        of theirs delivered again would then be applied again, so `before` must leave
        more than the bus's retention. Returns how many were forgotten."""

    @abc.abstractmethod
    def close(self) -> None: ...


class SegmentExists(ValueError):
    """A segment of that name exists already."""


class TooManySegments(ValueError):
    """As many custom segments as the settings allow exist already."""


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
# Ids of the events applied, for idempotency: pruned past FleetSettings'
# processed_retention_hours (longer than the bus keeps records, so that a redelivery is
# still recognised) by prune_processed.
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    Index("ix_processed_events_processed_at", "processed_at"),
)
catalog = catalog_table(metadata)
# The member's own consent choices; NULL: the configured default.
member_consent = Table(
    "member_consent",
    metadata,
    Column("member_id", String(128), primary_key=True),
    *(Column(key, Boolean) for key in CONSENT_KEYS),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
segment_definitions = Table(
    "segment_definitions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("condition", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
# A segment's size per day of the fleet's clock: the last count taken that day.
segment_sizes = Table(
    "segment_sizes",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("size", Integer, nullable=False),
)
erasures = erasures_table(metadata)
identity_links = links_table(metadata)
# Every table keyed by member id: an erasure empties each of them of the member.
MEMBER_TABLES = (
    member_categories,
    member_tags,
    member_purchases,
    member_orders,
    member_consent,
    members,
)


class SqlProfileStore(ProfileStore):
    def __init__(
        self, engine: Engine, settings: ProfilesSettings, secret: bytes | None = None
    ) -> None:
        # `secret` keys the tombstones' member digests: the fleet's PII secret, so that
        # they survive restarts (a random one otherwise, for tests that do not erase).
        self._secret = secret if secret is not None else os.urandom(32)
        self._engine = engine
        self.embedded = is_embedded(engine)
        self._settings = settings
        self._half_life_s = settings.affinity_half_life_days * 86400
        self._orders_applied = 0
        self._scoring: Scoring | None = None
        self._scoring_read = float("-inf")
        upgrade(engine, "profiles")

    @classmethod
    def from_url(
        cls, url: str, settings: ProfilesSettings, secret: bytes | None = None
    ) -> SqlProfileStore:
        return cls(make_engine(url), settings, secret)

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        with self._engine.begin() as conn:
            todo = unapplied(conn, processed_events.c.event_id, events)
            if not todo:
                return 0
            # Wall-clock time, as the bus's retention counts it (not the fleet clock, which
            # may be offset to replay a data set as of its own dates).
            now = datetime.now(UTC)
            insert_ignore(conn, processed_events, [(e.event_id, now) for e in todo])
            todo = followed(conn, self._secret, erasures, identity_links, todo)
            if todo:
                self._apply(conn, todo)
        return len(todo)

    def _digest(self, member_id: str) -> str:
        return member_digest(self._secret, member_id)

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

    def get(
        self, member_id: str, recent_limit: int = 20, purchases: bool = True
    ) -> MemberProfile | None:
        # Two statements, not one per table: on a server each is a round trip, and the
        # trips, not the rows, were most of a GetProfile.
        with self._engine.connect() as conn:
            wanted = {"member_id": member_id}
            rows = conn.execute(PORTRAIT_QUERY, wanted).all()
            if not rows:
                return None
            profile = _member_of(rows[0])
            profile.recent = profile.recent[:recent_limit]
            profile.manual_tags = sorted(
                (ManualTag(r.tag, _utc(r.tag_set_at)) for r in rows if r.tag is not None),
                key=lambda t: t.tag,
            )
            if rows[0].consent_at is not None:
                choices = _choices_of(rows[0]._mapping)
                profile.consent, profile.consent_at = choices, _utc(rows[0].consent_at)
            purchased = []
            for key, *stat in conn.execute(HOLDINGS_QUERIES[purchases], wanted):
                if stat[0] is None:
                    purchased.append(key)
                else:
                    profile.categories[key] = CategoryStat(*stat)
            profile.purchased = sorted(purchased)
            return profile

    def count_members(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(members)).scalar() or 0)

    def iter_profiles(self, after: str | None = None, batch: int = 500) -> Iterator[MemberProfile]:
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
                consent = _consent_choices(conn, ids)
            for member_id in ids:
                profile = profiles.get(member_id)
                if profile is None:
                    continue  # erased, or merged into a member, since the page was read
                profile.manual_tags = tags.get(member_id, [])
                profile.consent, profile.consent_at = consent.get(member_id, ({}, None))
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

    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        erased = False
        with self._engine.begin() as conn:
            for command in commands:
                if isinstance(command, Erase):
                    self._erase(conn, command)
                    erased = True
                elif isinstance(command, Link):
                    self._link(conn, command)
                else:
                    self._consent(conn, command)
        if erased:
            # Deleted rows are zeroed (secure_delete); the WAL still holds the pages as they
            # were until a checkpoint, so checkpoint now: no file keeps the member.
            scrub_freed(self._engine)

    def _erase(self, conn: Connection, command: Erase) -> None:
        seen = select(erasures.c.erasure_id).where(erasures.c.erasure_id == command.erasure_id)
        if conn.execute(seen).first() is not None:
            # Delivered again (a crash before the bus commit, a replay): what the member
            # did since the erasure is a new life, not to be wiped.
            return
        visitors = forget_links(conn, identity_links, command.member_id)
        ids = [command.member_id, *visitors]
        removed = 0
        for table in MEMBER_TABLES:
            done = conn.execute(delete(table).where(table.c.member_id.in_(ids)))
            removed += max(done.rowcount, 0)
        now = datetime.now(UTC)
        record_erasure(conn, erasures, command, self._digest(command.member_id), removed, now)
        for number, visitor in enumerate(visitors, start=1):
            as_visitor = Erase(visitor, f"{command.erasure_id}:{number}", command.at)
            record_erasure(conn, erasures, as_visitor, self._digest(visitor), 0, now)

    def _link(self, conn: Connection, link: Link) -> None:
        if link.anonymous_id == link.member_id:
            return
        # A link from before an erasure of either side is as erased as the events.
        digests = [self._digest(link.anonymous_id), self._digest(link.member_id)]
        if any(link.at < at for at in erased_since(conn, erasures, digests).values()):
            return
        saved = save_link(conn, identity_links, link)
        if saved is not None:
            self._merge(conn, saved.anonymous_id, saved.member_id)

    def _consent(self, conn: Connection, command: Consent) -> None:
        """A consent change seen in events: for the member a visitor is linked to, never
        from before an erasure, and never dated ahead of now (a device's clock must not
        outrank a choice made through the API)."""
        member_id = resolve_links(conn, identity_links, [command.member_id]).get(
            command.member_id, command.member_id
        )
        digests = [self._digest(command.member_id), self._digest(member_id)]
        if any(command.at < at for at in erased_since(conn, erasures, digests).values()):
            return
        at = min(command.at, datetime.now(UTC))
        _save_consent(conn, member_id, command.changes, at)

    def _merge(self, conn: Connection, visitor_id: str, member_id: str) -> None:
        """Move everything of the visitor onto the member (exactly once: the caller just
        saved the link, in this transaction)."""
        found = _load_members(conn, [visitor_id, member_id])
        visitor = found.get(visitor_id)
        if visitor is not None:
            member = found.get(member_id)
            if member is None:
                member = MemberProfile(member_id, visitor.first_seen, visitor.last_seen)
            merge_profiles(
                member,
                visitor,
                keep_recent=self._settings.recent_items,
                half_life_s=self._half_life_s,
            )
            _save_members(conn, [member], {(member_id, c) for c in member.categories})
        _move_rows(conn, visitor_id, member_id)

    def set_consent(
        self, member_id: str, changes: Mapping[str, bool], at: datetime
    ) -> tuple[dict[str, bool], datetime]:
        with self._engine.begin() as conn:
            _save_consent(conn, member_id, changes, at)
            choices, when = _consent_choices(conn, [member_id]).get(member_id, ({}, at))
        return choices, when

    def consent_choices(self, member_id: str) -> tuple[dict[str, bool], datetime | None]:
        # On the path of every recommendation for a visitor never seen: the statement is
        # built once (CONSENT_QUERY), as the portrait's is.
        with self._engine.connect() as conn:
            row = conn.execute(CONSENT_QUERY, {"member_id": member_id}).first()
        if row is None:
            return {}, None
        return _choices_of(row._mapping), _utc(row.updated_at)

    def segments(self) -> list[SegmentDefinition]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(segment_definitions).order_by(segment_definitions.c.name))
            return [
                SegmentDefinition(
                    name=row.name,
                    condition=row.condition,
                    description=row.description,
                    created_at=_utc(row.created_at),
                    updated_at=_utc(row.updated_at),
                )
                for row in rows
            ]

    def put_segment(
        self, definition: SegmentDefinition, at: datetime, create_only: bool = False
    ) -> SegmentDefinition:
        with self._engine.begin() as conn:
            table = segment_definitions
            created = conn.execute(
                select(table.c.created_at).where(table.c.name == definition.name)
            ).scalar()
            if created is not None and create_only:
                raise SegmentExists(f"a segment named '{definition.name}' exists already")
            if created is None:
                count = conn.execute(select(func.count()).select_from(table)).scalar() or 0
                if count >= self._settings.max_segments:
                    raise TooManySegments(
                        f"{count} segments exist, the most allowed "
                        "(RECOFLEET_PROFILES_MAX_SEGMENTS)"
                    )
            first = _utc(created) if created is not None else at
            row = (definition.name, definition.condition, definition.description, first, at)
            upsert(conn, table, [row], keys=["name"])
        return replace(definition, created_at=first, updated_at=at)

    def delete_segment(self, name: str) -> bool:
        with self._engine.begin() as conn:
            done = conn.execute(
                delete(segment_definitions).where(segment_definitions.c.name == name)
            )
            conn.execute(delete(segment_sizes).where(segment_sizes.c.name == name))
            return bool(done.rowcount)

    def record_sizes(self, day: date, sizes: Mapping[str, int], keep_days: int) -> None:
        rows = [(name, day, size) for name, size in sorted(sizes.items())]
        with self._engine.begin() as conn:
            upsert(conn, segment_sizes, rows, keys=["name", "day"])
            oldest = day - timedelta(days=keep_days)
            conn.execute(delete(segment_sizes).where(segment_sizes.c.day < oldest))

    def size_history(self, since: date) -> dict[str, list[tuple[date, int]]]:
        query = (
            select(segment_sizes)
            .where(segment_sizes.c.day >= since)
            .order_by(segment_sizes.c.name, segment_sizes.c.day)
        )
        history: dict[str, list[tuple[date, int]]] = {}
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                history.setdefault(row.name, []).append((_day(row.day), row.size))
        return history

    def prune_processed(self, before: datetime, batch: int = 10_000) -> int:
        # A batch per transaction: the consumer's writes wait for one batch at most
        # (SQLite has a single writer), however many ids are due.
        due = (
            select(processed_events.c.event_id)
            .where(processed_events.c.processed_at < before.astimezone(UTC))
            .limit(batch)
        )
        pruned = 0
        while True:
            with self._engine.begin() as conn:
                done = conn.execute(
                    delete(processed_events).where(processed_events.c.event_id.in_(due))
                ).rowcount
            pruned += done
            if done < batch:
                return pruned

    def close(self) -> None:
        self._engine.dispose()


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


def _save_consent(
    conn: Connection, member_id: str, changes: Mapping[str, bool], at: datetime
) -> None:
    """Merge the changes into the member's choices (a change older than the last one kept
    loses, so a delayed bus command cannot undo a newer choice made through the API)."""
    known = {k: bool(v) for k, v in changes.items() if k in CONSENT_KEYS}
    if not known:
        return
    found = _consent_choices(conn, [member_id]).get(member_id)
    choices, when = found if found else ({}, None)
    if when is not None and at < when:
        known = {k: v for k, v in known.items() if k not in choices}
        if not known:
            return
        at = when
    merged = {**choices, **known}
    row = (member_id, *(merged.get(k) for k in CONSENT_KEYS), at)
    upsert(conn, member_consent, [row], keys=["member_id"])


def _consent_choices(
    conn: Connection, member_ids: list[str]
) -> dict[str, tuple[dict[str, bool], datetime]]:
    found: dict[str, tuple[dict[str, bool], datetime]] = {}
    rows = conn.execute(select(member_consent).where(member_consent.c.member_id.in_(member_ids)))
    for row in rows:
        found[row.member_id] = (_choices_of(row._mapping), _utc(row.updated_at))
    return found


def _choices_of(values: RowMapping) -> dict[str, bool]:
    """The consent choices a row holds (NULL: no choice, the default applies)."""
    return {k: bool(values[k]) for k in CONSENT_KEYS if values[k] is not None}


def _move_rows(conn: Connection, visitor_id: str, member_id: str) -> None:
    """The visitor's purchases, orders, tags and consent become the member's; the visitor's
    rows go."""
    for table, key in ((member_purchases, "item_id"), (member_orders, "order_id")):
        keys = conn.execute(select(table.c[key]).where(table.c.member_id == visitor_id))
        insert_ignore(conn, table, [(member_id, k) for k in keys.scalars()])
    tags = conn.execute(
        select(member_tags.c.tag, member_tags.c.set_at).where(member_tags.c.member_id == visitor_id)
    )
    insert_ignore(conn, member_tags, [(member_id, tag, at) for tag, at in tags])
    consent = _consent_choices(conn, [visitor_id]).get(visitor_id)
    if consent:
        _save_consent(conn, member_id, consent[0], consent[1])
    for table in MEMBER_TABLES:
        conn.execute(delete(table).where(table.c.member_id == visitor_id))


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


def _day(value: date | str) -> date:
    # SQLite's driver may hand a DATE column back as text.
    return value if isinstance(value, date) else date.fromisoformat(value)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _order_key(event: AnyEvent) -> str:
    # A purchase without an order id is an order of its own.
    return event.order_id or f"event:{event.event_id}"


def _new_orders(conn: Connection, events: list[AnyEvent]) -> set[tuple[str, str]]:
    wanted = {(e.member_id, _order_key(e)) for e in events if e.type == EventType.PURCHASE}
    known: set[tuple[str, str]] = set()
    by_member: dict[str, set[str]] = {}
    for member_id, order_id in wanted:
        by_member.setdefault(member_id, set()).add(order_id)
    member_ids = list(by_member)
    for start in range(0, len(member_ids), 250):
        # By member id first: the key's leading column. Looking orders up by order id alone
        # scanned the whole table, so every batch got slower as the shop's orders grew.
        chunk = member_ids[start : start + 250]
        orders = list({order_id for m in chunk for order_id in by_member[m]})
        rows = conn.execute(
            select(member_orders.c.member_id, member_orders.c.order_id).where(
                member_orders.c.member_id.in_(chunk), member_orders.c.order_id.in_(orders)
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
            profiles[row.member_id] = _member_of(row)
        # Plain tuples in CategoryStat's field order: members have a row per category, and
        # a batch reads thousands of them.
        rows = conn.execute(
            select(member_categories).where(member_categories.c.member_id.in_(chunk))
        )
        for member_id, category, *stat in rows:
            profiles[member_id].categories[category] = CategoryStat(*stat)
    return profiles


def _member_of(row: Row) -> MemberProfile:
    return MemberProfile(
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


def _portrait_query() -> Select:
    """The member's row with their consent and one row per manual tag (few, capped)."""
    member_id = bindparam("member_id", type_=String)
    return (
        select(
            members,
            *(member_consent.c[k] for k in CONSENT_KEYS),
            member_consent.c.updated_at.label("consent_at"),
            member_tags.c.tag,
            member_tags.c.set_at.label("tag_set_at"),
        )
        .outerjoin(member_consent, member_consent.c.member_id == members.c.member_id)
        .outerjoin(member_tags, member_tags.c.member_id == members.c.member_id)
        .where(members.c.member_id == member_id)
    )


def _holdings_query(purchases: bool) -> Select | CompoundSelect:
    """The member's category rows and (when `purchases`) purchased items in one statement:
    a purchase row has a NULL weight (a category's never is)."""
    member_id = bindparam("member_id", type_=String)
    stats = [c for c in member_categories.c if c.name not in ("member_id", "category")]
    categories = select(member_categories.c.category, *stats).where(
        member_categories.c.member_id == member_id
    )
    if not purchases:
        return categories
    bought = select(
        member_purchases.c.item_id, *(cast(null(), c.type).label(c.name) for c in stats)
    ).where(member_purchases.c.member_id == member_id)
    return union_all(categories, bought)


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


# Built once: building a statement per read cost more than running it.
PORTRAIT_QUERY = _portrait_query()
CONSENT_QUERY = select(member_consent).where(member_consent.c.member_id == bindparam("member_id"))
HOLDINGS_QUERIES = {purchases: _holdings_query(purchases) for purchases in (True, False)}

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
