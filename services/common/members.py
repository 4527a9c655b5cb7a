"""Commands about one member that every service follows, and the state each keeps of them.

Erasure, identity links and consent changes travel on the members topic (MEMBERS_TOPIC),
keyed by member id (so one member's commands stay in order), and each service applies them
to its own state; no service touches another's store (DESIGN.md).

- `Erase`: remove everything keyed by the member, and keep a tombstone: a keyed digest of
  the id (never the id) and the instant of the erasure. An event of the member that
  happened before that instant is never applied again: one still in flight on the bus,
  and every one a consumer meets when it replays the log from the start.
- `Link`: an anonymous visitor turned out to be a member. The visitor's history merges
  into the member's, once, and later events of the visitor land on the member.
- `Consent`: the member's consent changed (profiles owns consent; others may follow).

Each service keeps its tombstones, audit entries and links in the tables made by
`erasures_table` and `links_table`, with the helpers below.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)

from services.common.bus.base import Message
from services.common.db import insert_ignore, unseen
from services.common.events import AnyEvent

CONSENT_KEYS = ("personalization", "email", "sms", "push", "onsite")
CHANNELS = CONSENT_KEYS[1:]


class Erase(msgspec.Struct, tag="erase", frozen=True):
    member_id: str
    erasure_id: str
    # The fleet clock's instant of the request: the member's events from before it are
    # never applied again.
    at: datetime


class Link(msgspec.Struct, tag="link", frozen=True):
    anonymous_id: str
    member_id: str
    at: datetime
    # Where the link was seen: "segment", "ga4", "google_retail", "native".
    source: str = ""


class Consent(msgspec.Struct, tag="consent", frozen=True):
    member_id: str
    at: datetime
    # A partial change: keys of CONSENT_KEYS.
    changes: dict[str, bool]


MemberCommand = Erase | Link | Consent

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MemberCommand)


def command_message(command: MemberCommand) -> Message:
    """The bus record of a command, keyed by the member it is about."""
    return Message(key=command.member_id, value=_encoder.encode(command))


def read_command(raw: bytes) -> MemberCommand:
    """The command a members-topic record holds; msgspec.ValidationError when none."""
    return _decoder.decode(raw)


def member_digest(secret: bytes, member_id: str) -> str:
    """What a tombstone keeps of a member id: a keyed hash, so no store holds the id."""
    return hmac.new(secret, member_id.encode("utf-8"), hashlib.sha256).hexdigest()[:40]


def erasures_table(metadata: MetaData) -> Table:
    """Tombstones and the audit trail of erasures: one row per erasure a service applied."""
    return Table(
        "member_erasures",
        metadata,
        Column("erasure_id", String(64), primary_key=True),
        Column("member_digest", String(64), nullable=False),
        Column("requested_at", DateTime(timezone=True), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
        # Rows the service removed (a figure for the audit, no content).
        Column("removed", Integer, nullable=False),
        Index("ix_member_erasures_digest", "member_digest"),
    )


def links_table(metadata: MetaData) -> Table:
    """Anonymous visitor -> member, as this service applied it (the first link wins)."""
    return Table(
        "identity_links",
        metadata,
        Column("anonymous_id", String(128), primary_key=True),
        Column("member_id", String(128), nullable=False),
        Column("linked_at", DateTime(timezone=True), nullable=False),
        Index("ix_identity_links_member", "member_id"),
    )


def record_erasure(
    conn: Connection, table: Table, command: Erase, digest: str, removed: int, now: datetime
) -> None:
    insert_ignore(conn, table, [(command.erasure_id, digest, command.at, now, removed)])


def erased_since(conn: Connection, table: Table, digests: Iterable[str]) -> dict[str, datetime]:
    """Per erased member digest among `digests`, the instant of its latest erasure."""
    wanted = list(dict.fromkeys(digests))
    found: dict[str, datetime] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(table.c.member_digest, func.max(table.c.requested_at))
            .where(table.c.member_digest.in_(wanted[start : start + 500]))
            .group_by(table.c.member_digest)
        )
        found.update((digest, _utc(at)) for digest, at in rows)
    return found


def resolve_links(conn: Connection, table: Table, member_ids: Iterable[str]) -> dict[str, str]:
    """anonymous id -> member for the ids among `member_ids` that are linked visitors."""
    wanted = list(dict.fromkeys(member_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(table.c.anonymous_id, table.c.member_id).where(
                table.c.anonymous_id.in_(wanted[start : start + 500])
            )
        )
        found.update((visitor, member) for visitor, member in rows)
    return found


def save_link(conn: Connection, table: Table, link: Link) -> Link | None:
    """Record the link, as saved, or None when nothing changes: the visitor is already
    linked (the first link wins), or the link would close a cycle.

    Links stay one hop deep: a member id that is itself a linked visitor stands for its
    member, and visitors linked to the newly linked one now point at its member too.
    """
    target = resolve_links(conn, table, [link.member_id]).get(link.member_id, link.member_id)
    if target == link.anonymous_id:
        return None
    if not insert_ignore(conn, table, [(link.anonymous_id, target, link.at)]):
        return None
    conn.execute(
        update(table).where(table.c.member_id == link.anonymous_id).values(member_id=target)
    )
    return Link(link.anonymous_id, target, link.at, link.source)


def forget_links(conn: Connection, table: Table, member_id: str) -> list[str]:
    """Remove the member's links (both ways); the visitor ids that were linked to them,
    which the caller tombstones too (their in-flight events must not come back)."""
    visitors = list(
        conn.execute(select(table.c.anonymous_id).where(table.c.member_id == member_id)).scalars()
    )
    conn.execute(
        delete(table).where((table.c.member_id == member_id) | (table.c.anonymous_id == member_id))
    )
    return visitors


def relabel(events: Sequence[AnyEvent], links: Mapping[str, str]) -> list[AnyEvent]:
    """The events with each linked visitor's id replaced by its member's."""
    if not links:
        return list(events)
    return [_as_member(e, links[e.member_id]) if e.member_id in links else e for e in events]


def followed(
    conn: Connection,
    secret: bytes,
    erasures: Table,
    links: Table,
    events: list[AnyEvent],
) -> list[AnyEvent]:
    """The events with linked visitors relabelled as their members, without those from
    before an erasure of their member (or of the visitor they came as)."""
    events = _unerased(conn, secret, erasures, events)
    found = resolve_links(conn, links, [e.member_id for e in events])
    return _unerased(conn, secret, erasures, relabel(events, found)) if found else events


def _unerased(
    conn: Connection, secret: bytes, erasures: Table, events: list[AnyEvent]
) -> list[AnyEvent]:
    digests = {m: member_digest(secret, m) for m in {e.member_id for e in events}}
    tombstones = erased_since(conn, erasures, digests.values())
    return unerased(events, tombstones, digests) if tombstones else events


def unapplied(
    conn: Connection, processed: Column[str], events: Sequence[AnyEvent]
) -> list[AnyEvent]:
    """The events whose id `processed` does not hold yet, each id once (a batch may repeat
    one)."""
    fresh = set(unseen(conn, processed, [e.event_id for e in events]))
    todo = []
    for event in events:
        if event.event_id in fresh:
            fresh.remove(event.event_id)
            todo.append(event)
    return todo


def _as_member(event: AnyEvent, member_id: str) -> AnyEvent:
    if isinstance(event, msgspec.Struct):
        return msgspec.structs.replace(event, member_id=member_id)
    return event.model_copy(update={"member_id": member_id})


def unerased(
    events: Sequence[AnyEvent], tombstones: Mapping[str, datetime], digest_of: Mapping[str, str]
) -> list[AnyEvent]:
    """The events not from before their member's latest erasure."""
    if not tombstones:
        return list(events)
    kept = []
    for event in events:
        erased_at = tombstones.get(digest_of[event.member_id])
        if erased_at is None or event.timestamp >= erased_at:
            kept.append(event)
    return kept


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
