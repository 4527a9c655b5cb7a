"""What campaigns keep of their campaigns: definitions, exposures, coupon codes, redemptions.

Frequency caps hold across gateway and campaigns replicas because the count and the record
of an exposure happen in one transaction that first takes a row lock on the member and
channel (`cap_locks`): on PostgreSQL the row lock queues concurrent offers to one member on
one channel; on SQLite the first write takes the database's write lock. Whoever comes
second counts the first one's exposure.
"""

from __future__ import annotations

import abc
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from services.campaigns.model import (
    CampaignDefinition,
    DefinitionError,
    FrequencyCap,
    Status,
    validated,
)
from services.campaigns.store import metadata
from services.common.db import insert_ignore, make_engine, scrub_freed
from services.common.exposures import Exposure, Group
from services.common.members import (
    Erase,
    Link,
    MemberCommand,
    erasures_table,
    forget_links,
    links_table,
    member_digest,
    record_erasure,
    save_link,
)
from services.common.migrations import upgrade

log = logging.getLogger(__name__)
# The service's one schema: the catalog's and the rules' tables (store.py) and these.
campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("definition", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
exposures = Table(
    "exposures",
    metadata,
    Column("exposure_id", String(64), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("member_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("grp", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("coupon_code", String(64), nullable=False),
    Column("tier", String(40), nullable=False),
    Index("ix_exposures_member", "member_id", "channel", "at"),
    Index("ix_exposures_campaign", "campaign_id", "channel"),
)
cap_locks = Table(
    "cap_locks",
    metadata,
    Column("member_id", String(128), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("taken", Integer, nullable=False),
)
coupon_codes = Table(
    "coupon_codes",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("member_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_coupon_codes_member", "campaign_id", "member_id", unique=True),
)
redemptions = Table(
    "redemptions",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    # The order id, or the event id of an order without one: an order counts once.
    Column("order_key", String(128), primary_key=True),
    Column("member_id", String(128), nullable=False),
    Column("code", String(64), nullable=False),
    # The channel the code reached the member on; empty for a fixed code nobody was sent.
    Column("channel", String(16), nullable=False),
    Column("revenue", Float, nullable=False),
    Column("cost", Float, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_redemptions_member", "member_id"),
)
erasures = erasures_table(metadata)
links = links_table(metadata)


@dataclass(frozen=True)
class StoredCampaign:
    campaign_id: str
    definition: CampaignDefinition
    created_at: datetime
    updated_at: datetime

    @property
    def status(self) -> Status:
        return self.definition.status


@dataclass(frozen=True)
class Planned:
    """An exposure an offer or an export wants to record, and the campaign's own cap on it."""

    campaign_id: str
    group: Group
    cap: FrequencyCap | None = None
    offer_id: str = ""
    tier: str = ""
    # For unique codes: the prefix of the code to give (the member's existing code if any).
    code_prefix: str = ""
    fixed_code: str = ""


@dataclass(frozen=True)
class Redemption:
    campaign_id: str
    order_key: str
    member_id: str
    code: str
    revenue: float
    cost: float
    at: datetime


@dataclass(frozen=True)
class Spent:
    redemptions: int = 0
    cost: float = 0.0
    revenue: float = 0.0


class CampaignStore(abc.ABC):
    @abc.abstractmethod
    def create(self, campaign_id: str, definition: CampaignDefinition, now: datetime) -> None: ...

    @abc.abstractmethod
    def replace(
        self, campaign_id: str, definition: CampaignDefinition, now: datetime
    ) -> StoredCampaign | None:
        """The campaign with its new definition; None when there is no such campaign."""

    @abc.abstractmethod
    def get(self, campaign_id: str) -> StoredCampaign | None:
        """None when there is no such campaign; DefinitionError naming the field when its
        stored definition is no longer a campaign (see `all`)."""

    @abc.abstractmethod
    def all(self) -> list[StoredCampaign]:
        """Every campaign, oldest first; one whose stored definition is no longer a
        campaign (stored before a check it fails was made) left out, and logged."""

    @abc.abstractmethod
    def delete(self, campaign_id: str) -> bool: ...

    @abc.abstractmethod
    def expose(
        self,
        member_id: str,
        channel: str,
        wanted: Sequence[Planned],
        global_cap: FrequencyCap | None,
        now: datetime,
        preview: bool = False,
    ) -> tuple[list[Exposure], dict[str, str]]:
        """Record what `wanted` asks, in order, as far as the caps allow: the exposures
        recorded (with the member's coupon codes) and, by campaign, why the others were not
        ("capped"). A control hold-out is recorded once per campaign, member and channel,
        and never counts against a cap. A `preview` records nothing (a unique code not
        given yet is left empty)."""

    @abc.abstractmethod
    def responses(self, member_id: str) -> dict[str, tuple[int, int]]:
        """Per channel, the member's exposures and the redemptions of codes sent on it."""

    @abc.abstractmethod
    def campaign_of_code(self, code: str) -> tuple[str, str] | None:
        """The campaign and member a unique code was given for."""

    @abc.abstractmethod
    def offered_tier(self, campaign_id: str, member_id: str) -> str:
        """The tier of the member's latest exposure to the campaign; empty when none."""

    @abc.abstractmethod
    def redeem(self, found: Sequence[Redemption]) -> int:
        """Record redemptions, each order once per campaign; how many were new."""

    @abc.abstractmethod
    def spent(self) -> dict[str, Spent]:
        """Redemptions and discounts granted so far, by campaign."""

    @abc.abstractmethod
    def exposure_counts(self, campaign_id: str) -> dict[tuple[str, str], int]:
        """(channel, group) -> exposures of the campaign."""

    @abc.abstractmethod
    def members_of(self, campaign_id: str) -> dict[str, tuple[str, str]]:
        """Member -> (group, coupon code) of their first exposure to the campaign."""

    @abc.abstractmethod
    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        """Erasures (the member's exposures and codes go; their redemptions stay counted
        for the budget, under a keyed digest instead of their id) and identity links."""

    @abc.abstractmethod
    def close(self) -> None: ...


class SqlCampaignStore(CampaignStore):
    def __init__(self, engine: Engine, secret: bytes) -> None:
        self._engine = engine
        self._secret = secret
        upgrade(engine, "campaigns")

    @classmethod
    def from_url(cls, url: str, secret: bytes) -> SqlCampaignStore:
        return cls(make_engine(url), secret)

    def create(self, campaign_id: str, definition: CampaignDefinition, now: datetime) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(campaigns).values(
                    campaign_id=campaign_id,
                    name=definition.name,
                    status=definition.status,
                    definition=definition.model_dump_json(),
                    created_at=now,
                    updated_at=now,
                )
            )

    def replace(
        self, campaign_id: str, definition: CampaignDefinition, now: datetime
    ) -> StoredCampaign | None:
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(campaigns)
                .where(campaigns.c.campaign_id == campaign_id)
                .values(
                    name=definition.name,
                    status=definition.status,
                    definition=definition.model_dump_json(),
                    updated_at=now,
                )
            ).rowcount
        return self.get(campaign_id) if changed else None

    def get(self, campaign_id: str) -> StoredCampaign | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(campaigns).where(campaigns.c.campaign_id == campaign_id)
            ).first()
        return _campaign(row._mapping) if row else None

    def all(self) -> list[StoredCampaign]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(campaigns).order_by(campaigns.c.created_at)).mappings()
            return [found for row in rows if (found := _readable(row)) is not None]

    def delete(self, campaign_id: str) -> bool:
        with self._engine.begin() as conn:
            gone = conn.execute(delete(campaigns).where(campaigns.c.campaign_id == campaign_id))
            return bool(gone.rowcount)

    def expose(
        self,
        member_id: str,
        channel: str,
        wanted: Sequence[Planned],
        global_cap: FrequencyCap | None,
        now: datetime,
        preview: bool = False,
    ) -> tuple[list[Exposure], dict[str, str]]:
        recorded: list[Exposure] = []
        refused: dict[str, str] = {}
        with self._engine.connect() as conn, conn.begin() as transaction:
            if not preview:
                _lock(conn, member_id, channel)
            shown = _shown_since(conn, member_id, channel, _window_start(wanted, global_cap, now))
            for plan in wanted:
                exposure = self._one(
                    conn, member_id, channel, plan, shown, global_cap, now, preview
                )
                if exposure is None:
                    if plan.group == "treatment":
                        refused[plan.campaign_id] = "capped"
                    continue
                recorded.append(exposure)
                if exposure.group == "treatment":
                    shown.append((plan.campaign_id, now))
            if preview:
                transaction.rollback()
        return recorded, refused

    def _one(
        self,
        conn: Connection,
        member_id: str,
        channel: str,
        plan: Planned,
        shown: list[tuple[str, datetime]],
        global_cap: FrequencyCap | None,
        now: datetime,
        preview: bool,
    ) -> Exposure | None:
        if plan.group == "control":
            if _held_out_before(conn, plan.campaign_id, member_id, channel):
                return None
            return _record(conn, member_id, channel, plan, "", now)
        if _over(global_cap, shown, now, None) or _over(plan.cap, shown, now, plan.campaign_id):
            return None
        code = plan.fixed_code or self._code(conn, plan, member_id, now, preview)
        return _record(conn, member_id, channel, plan, code, now)

    def _code(
        self, conn: Connection, plan: Planned, member_id: str, now: datetime, preview: bool
    ) -> str:
        """The member's own code for the campaign: the one given before, or a new one."""
        existing = conn.execute(
            select(coupon_codes.c.code).where(
                coupon_codes.c.campaign_id == plan.campaign_id,
                coupon_codes.c.member_id == member_id,
            )
        ).scalar()
        if existing or preview:
            return str(existing or "")
        while True:
            code = f"{plan.code_prefix}-{secrets.token_hex(4).upper()}"
            row = (code, plan.campaign_id, member_id, now)
            if insert_ignore(conn, coupon_codes, [row]):
                return code

    def responses(self, member_id: str) -> dict[str, tuple[int, int]]:
        with self._engine.connect() as conn:
            shown = conn.execute(
                select(exposures.c.channel, func.count())
                .where(exposures.c.member_id == member_id, exposures.c.grp == "treatment")
                .group_by(exposures.c.channel)
            ).all()
            answered = conn.execute(
                select(redemptions.c.channel, func.count())
                .where(redemptions.c.member_id == member_id)
                .group_by(redemptions.c.channel)
            ).all()
        won = {channel: n for channel, n in answered}
        return {channel: (n, won.get(channel, 0)) for channel, n in shown}

    def campaign_of_code(self, code: str) -> tuple[str, str] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(coupon_codes.c.campaign_id, coupon_codes.c.member_id).where(
                    coupon_codes.c.code == code
                )
            ).first()
        return (row[0], row[1]) if row else None

    def offered_tier(self, campaign_id: str, member_id: str) -> str:
        query = (
            select(exposures.c.tier)
            .where(
                exposures.c.campaign_id == campaign_id,
                exposures.c.member_id == member_id,
                exposures.c.grp == "treatment",
            )
            .order_by(exposures.c.at.desc())
            .limit(1)
        )
        with self._engine.connect() as conn:
            return str(conn.execute(query).scalar() or "")

    def redeem(self, found: Sequence[Redemption]) -> int:
        if not found:
            return 0
        with self._engine.begin() as conn:
            channels = _channels_of_codes(conn, found)
            rows = [
                (
                    r.campaign_id,
                    r.order_key,
                    r.member_id,
                    r.code,
                    channels.get((r.campaign_id, r.member_id), ""),
                    r.revenue,
                    r.cost,
                    r.at,
                )
                for r in found
            ]
            return insert_ignore(conn, redemptions, rows)

    def spent(self) -> dict[str, Spent]:
        query = select(
            redemptions.c.campaign_id,
            func.count(),
            func.coalesce(func.sum(redemptions.c.cost), 0.0),
            func.coalesce(func.sum(redemptions.c.revenue), 0.0),
        ).group_by(redemptions.c.campaign_id)
        with self._engine.connect() as conn:
            return {
                cid: Spent(int(n), float(cost), float(revenue))
                for cid, n, cost, revenue in conn.execute(query)
            }

    def exposure_counts(self, campaign_id: str) -> dict[tuple[str, str], int]:
        query = (
            select(exposures.c.channel, exposures.c.grp, func.count())
            .where(exposures.c.campaign_id == campaign_id)
            .group_by(exposures.c.channel, exposures.c.grp)
        )
        with self._engine.connect() as conn:
            return {(channel, grp): int(n) for channel, grp, n in conn.execute(query)}

    def members_of(self, campaign_id: str) -> dict[str, tuple[str, str]]:
        query = (
            select(exposures.c.member_id, exposures.c.grp, exposures.c.coupon_code)
            .where(exposures.c.campaign_id == campaign_id)
            .order_by(exposures.c.at.desc())
        )
        with self._engine.connect() as conn:
            # Newest first, so the first exposure of each member is the one kept.
            return {member: (grp, code) for member, grp, code in conn.execute(query)}

    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        erased = False
        with self._engine.begin() as conn:
            for command in commands:
                if isinstance(command, Erase):
                    self._erase(conn, command)
                    erased = True
                elif isinstance(command, Link):
                    self._link(conn, command)
        if erased:
            scrub_freed(self._engine)

    def _erase(self, conn: Connection, command: Erase) -> None:
        for member_id in [command.member_id, *forget_links(conn, links, command.member_id)]:
            digest = member_digest(self._secret, member_id)
            removed = 0
            for table in (exposures, coupon_codes, cap_locks):
                gone = conn.execute(delete(table).where(table.c.member_id == member_id))
                removed += gone.rowcount
            conn.execute(
                update(redemptions)
                .where(redemptions.c.member_id == member_id)
                .values(member_id=f"erased:{digest[:32]}")
            )
            record_erasure(conn, erasures, command, digest, removed, datetime.now(UTC))

    def _link(self, conn: Connection, link: Link) -> None:
        if save_link(conn, links, link) is None:
            return
        for table in (exposures, redemptions):
            conn.execute(
                update(table)
                .where(table.c.member_id == link.anonymous_id)
                .values(member_id=link.member_id)
            )
        # A visitor's code stays theirs unless the member has one for that campaign already.
        taken = select(coupon_codes.c.campaign_id).where(coupon_codes.c.member_id == link.member_id)
        conn.execute(
            update(coupon_codes)
            .where(
                coupon_codes.c.member_id == link.anonymous_id,
                coupon_codes.c.campaign_id.not_in(taken.scalar_subquery()),
            )
            .values(member_id=link.member_id)
        )

    def close(self) -> None:
        self._engine.dispose()


def _campaign(row: Any) -> StoredCampaign:
    return StoredCampaign(
        campaign_id=row["campaign_id"],
        definition=validated(row["definition"]),
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
    )


def _readable(row: Any) -> StoredCampaign | None:
    # Offered, it could break every member's offers (an end no answer can carry, an audience
    # profiles refuses); refusing to read every campaign for it would stop all of them.
    # Replacing or deleting it puts it right.
    try:
        return _campaign(row)
    except DefinitionError as exc:
        # Said once per process: every replica reads the campaigns again every second.
        if row["campaign_id"] not in _LEFT_OUT:
            _LEFT_OUT.add(row["campaign_id"])
            log.warning("campaign %s left out: %s", row["campaign_id"], exc)
        return None


_LEFT_OUT: set[str] = set()


def _lock(conn: Connection, member_id: str, channel: str) -> None:
    """Queue every other transaction offering to this member on this channel behind ours."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(cap_locks).values(member_id=member_id, channel=channel, taken=1)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["member_id", "channel"], set_={"taken": cap_locks.c.taken + 1}
        )
    )


def _window_start(
    wanted: Sequence[Planned], global_cap: FrequencyCap | None, now: datetime
) -> datetime:
    days = [p.cap.per_days for p in wanted if p.cap] + ([global_cap.per_days] if global_cap else [])
    return now - timedelta(days=max(days, default=0.0))


def _shown_since(
    conn: Connection, member_id: str, channel: str, since: datetime
) -> list[tuple[str, datetime]]:
    rows = conn.execute(
        select(exposures.c.campaign_id, exposures.c.at).where(
            exposures.c.member_id == member_id,
            exposures.c.channel == channel,
            exposures.c.grp == "treatment",
            exposures.c.at >= since,
        )
    ).all()
    return [(campaign_id, _utc(at)) for campaign_id, at in rows]


def _over(
    cap: FrequencyCap | None,
    shown: list[tuple[str, datetime]],
    now: datetime,
    campaign_id: str | None,
) -> bool:
    """Whether one more exposure would break the cap (of one campaign, or of all)."""
    if cap is None:
        return False
    since = now - timedelta(days=cap.per_days)
    counted = sum(
        1 for cid, at in shown if at > since and (campaign_id is None or cid == campaign_id)
    )
    return counted >= cap.max


def _held_out_before(conn: Connection, campaign_id: str, member_id: str, channel: str) -> bool:
    found = conn.execute(
        select(exposures.c.exposure_id)
        .where(
            exposures.c.campaign_id == campaign_id,
            exposures.c.member_id == member_id,
            exposures.c.channel == channel,
            exposures.c.grp == "control",
        )
        .limit(1)
    ).first()
    return found is not None


def _record(
    conn: Connection, member_id: str, channel: str, plan: Planned, code: str, now: datetime
) -> Exposure:
    exposure = Exposure(
        exposure_id=f"x-{secrets.token_hex(12)}",
        campaign_id=plan.campaign_id,
        member_id=member_id,
        channel=channel,
        group=plan.group,
        at=now,
        offer_id=plan.offer_id,
        coupon_code=code,
        tier=plan.tier,
    )
    conn.execute(
        insert(exposures).values(
            exposure_id=exposure.exposure_id,
            campaign_id=plan.campaign_id,
            member_id=member_id,
            channel=channel,
            grp=plan.group,
            at=now,
            coupon_code=code,
            tier=plan.tier,
        )
    )
    return exposure


def _channels_of_codes(conn: Connection, found: Sequence[Redemption]) -> dict[tuple[str, str], str]:
    """(campaign, member) -> the channel of the member's latest exposure with the code."""
    codes = list({r.code for r in found})
    rows = conn.execute(
        select(exposures.c.campaign_id, exposures.c.member_id, exposures.c.channel)
        .where(exposures.c.coupon_code.in_(codes), exposures.c.grp == "treatment")
        .order_by(exposures.c.at)
    ).all()
    return {(campaign_id, member_id): channel for campaign_id, member_id, channel in rows}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
