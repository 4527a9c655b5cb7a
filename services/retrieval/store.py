"""Interactions retrieval learns from, kept from the event bus (interface and SQL store).

The store also follows the members topic (services/common/members.py): an erasure removes
the member's interactions and leaves a tombstone that keeps their older events out for
good; a link moves an anonymous visitor's interactions to the member (docs/erasure.md,
docs/identity.md).
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

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
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection

from services.common.catalog import catalog_table, load_items, save_items
from services.common.db import insert_ignore, is_embedded, make_engine
from services.common.events import AnyEvent, CatalogItem
from services.common.members import (
    Erase,
    Link,
    erased_since,
    erasures_table,
    forget_links,
    links_table,
    member_digest,
    record_erasure,
    resolve_links,
    save_link,
    unerased,
)
from services.common.migrations import upgrade


@dataclass(frozen=True, slots=True)
class Activity:
    """One line of one of a member's events, as serving folds it in."""

    item_id: str
    event_type: str
    weight: float
    at: datetime


@dataclass(frozen=True, slots=True)
class TrainingRow:
    """One line of one event, as training reads it: `basket` is the event's id, so the
    lines of one order share it (what "bought together" counts)."""

    member_id: str
    item_id: str
    event_type: str
    weight: float
    at: datetime
    basket: str


class InteractionStore(abc.ABC):
    # Reads are local and never wait on a server (an embedded database).
    embedded: bool = False

    @abc.abstractmethod
    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        """Record the weighted interactions of events not recorded before; return how many
        interactions were new.

        An event of a linked visitor is recorded for the member it is linked to; an event
        from before its member's (or visitor's) latest erasure is not recorded at all, be
        it one still in flight or one met again on a replay of the log."""

    @abc.abstractmethod
    def erase_member(self, command: Erase) -> int:
        """Apply an erasure, in one transaction: delete the interactions of the member and
        of the visitors linked to them, forget those links, and keep a tombstone (a digest,
        never the id, and the erasure's instant) with an audit entry for the member and for
        each such visitor. Applying the same erasure again changes nothing, not even what
        the member did after it. Returns the rows removed."""

    @abc.abstractmethod
    def link_visitors(self, commands: Sequence[Link]) -> int:
        """Apply links, in order, in one transaction: the first link of a visitor is kept
        and moves the visitor's interactions to the member, once; later events of the
        visitor are recorded for the member. A link from before the member's or visitor's
        erasure (met again on a replay) is not applied. Returns how many links were new."""

    @abc.abstractmethod
    def save_catalog(self, items: Sequence[CatalogItem]) -> None: ...

    @abc.abstractmethod
    def categories(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Category of each known item."""

    @abc.abstractmethod
    def linked_members(self, member_ids: Iterable[str]) -> dict[str, str]:
        """The member each of these visitor ids is linked to (ids without a link left out)."""

    @abc.abstractmethod
    def member_activity(self, member_id: str, limit: int) -> list[Activity]:
        """The member's latest `limit` interaction lines, newest first."""

    @abc.abstractmethod
    def training_rows(self) -> Iterator[TrainingRow]:
        """Every interaction line, oldest first (the training data)."""

    @abc.abstractmethod
    def catalog_items(self) -> Iterator[CatalogItem]:
        """Every item of the local catalog copy."""

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
erasures = erasures_table(metadata)
links = links_table(metadata)
# What a consumer writes: every column but the id the database numbers.
_INTERACTION_COLUMNS = ("event_id", "line", "member_id", "item_id", "event_type", "weight", "at")


class SqlInteractionStore(InteractionStore):
    """On SQLite or PostgreSQL. `secret` is the fleet's PII secret (services.common.pii),
    the key of the tombstones' digests: every service path passes it. A store made without
    one (a benchmark's, say) records events and links but refuses erasures."""

    def __init__(
        self,
        engine: Engine,
        weights: Mapping[str, float],
        secret: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self.embedded = is_embedded(engine)
        self._weights = dict(weights)
        self._secret = secret
        self._clock = clock
        upgrade(engine, "retrieval")

    @classmethod
    def from_url(
        cls,
        url: str,
        weights: Mapping[str, float],
        secret: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> SqlInteractionStore:
        return cls(make_engine(url), weights, secret, clock)

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        with self._engine.begin() as conn:
            owned = self._owners(conn, events)
            rows = [row for member_id, event in owned for row in self._rows(member_id, event)]
            return insert_ignore(conn, interactions, rows, _INTERACTION_COLUMNS)

    def _owners(self, conn: Connection, events: Sequence[AnyEvent]) -> list[tuple[str, AnyEvent]]:
        """The events to record, each with the member it is recorded for: the one its
        visitor is linked to, if any. An event from before the latest erasure of its own
        member (or visitor) id is left out. (An erasure forgets the member's links, so a
        visitor linked to an erased member is relabelled only by a link made later.)"""
        ids = {e.member_id for e in events}
        linked = resolve_links(conn, links, ids)
        if self._secret is None:
            kept = list(events)  # no tombstone can have been kept without a secret
        else:
            digest_of = {i: member_digest(self._secret, i) for i in ids}
            tombstones = erased_since(conn, erasures, digest_of.values())
            kept = unerased(events, tombstones, digest_of)
        return [(linked.get(e.member_id, e.member_id), e) for e in kept]

    def erase_member(self, command: Erase) -> int:
        if self._secret is None:
            raise RuntimeError("this interaction store has no PII secret: it cannot erase")
        secret = self._secret
        removed = 0
        with self._engine.begin() as conn:
            if _applied(conn, command):
                # A redelivery, or a replay of the log: what the member did since (a new
                # life, a new link) is not theirs to lose, and nothing older came back.
                return 0
            _overwrite_deleted(conn)
            visitors = forget_links(conn, links, command.member_id)
            for erased in [command, *(_visitor_erasure(command, v, secret) for v in visitors)]:
                count = conn.execute(
                    delete(interactions).where(interactions.c.member_id == erased.member_id)
                ).rowcount
                digest = member_digest(secret, erased.member_id)
                record_erasure(conn, erasures, erased, digest, count, self._clock())
                removed += count
        _drop_old_pages(self._engine)
        return removed

    def link_visitors(self, commands: Sequence[Link]) -> int:
        wanted = [c for c in commands if c.anonymous_id != c.member_id]
        if not wanted:
            return 0
        applied = 0
        with self._engine.begin() as conn:
            # Most links repeat one already kept (a signed-in visitor's every request).
            linked = resolve_links(conn, links, {c.anonymous_id for c in wanted})
            wanted = [c for c in wanted if c.anonymous_id not in linked]
            erased_at = self._erased_at(conn, [i for c in wanted for i in _ids(c)])
            for command in wanted:
                if any(command.at < erased_at[i] for i in _ids(command) if i in erased_at):
                    continue  # from before an erasure: met again on a replay
                saved = save_link(conn, links, command)
                if saved is None:
                    continue  # linked twice in this batch (the first wins), or a cycle
                conn.execute(
                    update(interactions)
                    .where(interactions.c.member_id == saved.anonymous_id)
                    .values(member_id=saved.member_id)
                )
                applied += 1
        return applied

    def _erased_at(self, conn: Connection, member_ids: Sequence[str]) -> dict[str, datetime]:
        """Per id among `member_ids` with a tombstone, the instant of its latest erasure."""
        if self._secret is None or not member_ids:
            return {}
        digest_of = {i: member_digest(self._secret, i) for i in member_ids}
        tombstones = erased_since(conn, erasures, digest_of.values())
        return {i: tombstones[d] for i, d in digest_of.items() if d in tombstones}

    def _rows(self, member_id: str, event: AnyEvent) -> list[tuple[object, ...]]:
        weight = self._weights.get(event.type.value, 0.0)
        if weight <= 0:
            return []
        return [
            (
                event.event_id,
                line_no,
                member_id,
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

    def linked_members(self, member_ids: Iterable[str]) -> dict[str, str]:
        with self._engine.connect() as conn:
            return resolve_links(conn, links, set(member_ids))

    def member_activity(self, member_id: str, limit: int) -> list[Activity]:
        c = interactions.c
        query = (
            select(c.item_id, c.event_type, c.weight, c.at)
            .where(c.member_id == member_id)
            .order_by(c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [Activity(i, t, float(w), _utc(at)) for i, t, w, at in conn.execute(query)]

    def training_rows(self) -> Iterator[TrainingRow]:
        c = interactions.c
        query = select(c.member_id, c.item_id, c.event_type, c.weight, c.at, c.event_id).order_by(
            c.id
        )
        with self._engine.connect() as conn:
            result = conn.execution_options(yield_per=10_000).execute(query)
            for member_id, item_id, event_type, weight, at, basket in result:
                yield TrainingRow(member_id, item_id, event_type, float(weight), _utc(at), basket)

    def catalog_items(self) -> Iterator[CatalogItem]:
        with self._engine.connect() as conn:
            for row in conn.execute(select(catalog)).mappings():
                yield CatalogItem(**row)

    def fingerprint(self) -> str:
        with self._engine.connect() as conn:
            count, last = conn.execute(
                select(func.count(), func.max(interactions.c.id)).select_from(interactions)
            ).one()
        return f"{count}:{last or 0}"

    def close(self) -> None:
        self._engine.dispose()


def _utc(at: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written in UTC.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _applied(conn: Connection, command: Erase) -> bool:
    found = conn.execute(
        select(erasures.c.erasure_id).where(erasures.c.erasure_id == command.erasure_id)
    ).first()
    return found is not None


def _ids(link: Link) -> tuple[str, str]:
    return (link.anonymous_id, link.member_id)


def _visitor_erasure(command: Erase, visitor_id: str, secret: bytes) -> Erase:
    """The erasure of a visitor linked to the erased member: its own audit entry, under an
    id derived from the member's erasure (the same on every replay, so applied once)."""
    derived = uuid.uuid5(
        uuid.NAMESPACE_URL, f"{command.erasure_id}/{member_digest(secret, visitor_id)}"
    )
    return Erase(member_id=visitor_id, erasure_id=str(derived), at=command.at)


def _overwrite_deleted(conn: Connection) -> None:
    """On SQLite, make this connection zero what it deletes: a deleted row would otherwise
    stay readable in the file's free pages until they are reused. PostgreSQL frees dead
    rows at its next vacuum (docs/erasure.md)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA secure_delete = ON")


def _drop_old_pages(engine: Engine) -> None:
    """On SQLite, copy the write-ahead log into the database and empty it, so that the
    pages from before an erasure are not left behind in the log file. Busy readers may
    hold it back; the next checkpoint then does it."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
