"""What analytics keeps: impressions, outcomes and their attribution, members' daily spend,
campaign exposures.

One interface, one SQLAlchemy implementation for SQLite and PostgreSQL. Every click, add to
cart, purchase and refund of a member is kept, attributed or not, because impressions come
on a topic of their own that is not ordered with the members' events: an impression that
arrives after the outcomes it is owed to attributes them then (services/analytics/
attribution.py has the rules). A report is read with a few aggregate statements, and so
are a campaign's outcomes (services/analytics/campaigns.py has their rules).
"""

from __future__ import annotations

import abc
import os
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Interval,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.sql import Select, Subquery
from sqlalchemy.sql.elements import ColumnElement

from services.analytics.attribution import (
    ADD_TO_CART,
    CLICK,
    PURCHASE,
    REFUND,
    Attribution,
    Impression,
    Line,
    Outcome,
    attribute,
    impression_of,
    may_claim,
    outcome_of,
    refunded,
)
from services.analytics.campaigns import (
    TREATMENT,
    CampaignFigures,
    GroupMembers,
    by_exposure_id,
)
from services.analytics.reports import ExperimentFigures, Latencies, MemberFigures
from services.analytics.settings import AnalyticsSettings
from services.common.coupons import coupon_key
from services.common.db import insert_ignore, is_embedded, make_engine, scrub_freed, unseen, upsert
from services.common.events import AnyEvent
from services.common.exposures import Exposure
from services.common.members import (
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


class AnalyticsStore(abc.ABC):
    """Applies impressions and outcomes once per event id, attributes the outcomes, follows
    the members topic, and reads the figures of experiments' reports."""

    # Reads are local and never wait on a server (an embedded database).
    embedded: bool = False

    @abc.abstractmethod
    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        """Apply the events not applied before (by event_id), atomically: impressions are
        recorded, clicks, carts, purchases and refunds kept and attributed (and earlier
        outcomes attributed again when a new impression claims them), purchases and
        refunds added to the member's daily spend. Returns how many were applied (other
        types count, doing nothing; erased members' events do not)."""

    @abc.abstractmethod
    def apply_exposures(self, exposures: Sequence[Exposure]) -> int:
        """Record the campaign exposures not recorded before (by exposure_id), a linked
        visitor's as their member's, leaving out those from before an erasure of their
        member. Returns how many were recorded."""

    @abc.abstractmethod
    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        """Apply members-topic commands in order: erase (every row of the member and of the
        visitors linked to them goes; a tombstone stays), link (the visitor's impressions,
        outcomes, exposures and spend become the member's, once, and are attributed again).
        Consent changes are the profiles service's. Applying one again changes nothing."""

    @abc.abstractmethod
    def impression(self, recommendation_id: str) -> Impression | None:
        """The impression of a recommendation answer, None when none was recorded."""

    @abc.abstractmethod
    def outcomes(self, member_id: str) -> list[Outcome]:
        """The member's kept outcomes with their attribution, by time."""

    @abc.abstractmethod
    def daily_spend(self, member_id: str) -> dict[date, float]:
        """What the member spent per day (UTC): purchases less refunds."""

    @abc.abstractmethod
    def experiment_figures(
        self,
        experiment_id: str,
        started_at: datetime | None = None,
        stopped_at: datetime | None = None,
    ) -> ExperimentFigures:
        """The figures of every member with an impression of the experiment shown in
        [started_at, stopped_at) (from its first impression when `started_at` is None; up
        to now when `stopped_at` is), grouped by the variant each was shown first: their
        impressions, attributed clicks, carts and purchases and revenue (refunds deducted)
        of those impressions, what refunds reversed of it, and spend over the pre-period
        before `started_at`; and per variant the serving latencies of its impressions in
        the window that carry one (by the impression's own variant)."""

    @abc.abstractmethod
    def campaign_figures(
        self, campaign_id: str, window: timedelta, as_of: datetime
    ) -> CampaignFigures:
        """The figures of every member exposed to or held out from the campaign, grouped by
        the group of their first exposure: whether they bought within `window` after it and
        those purchases' value less their orders' refunds (services/analytics/campaigns.py);
        treatment exposures per channel, treatment members' purchases in their window with a
        coupon code they were given, members in both groups, and members whose window had
        not ended at `as_of`."""

    @abc.abstractmethod
    def prune_processed(self, before: datetime) -> int:
        """Forget the ids of events applied before `before` (wall-clock time): `before`
        must leave more than the bus's retention. Returns how many were forgotten."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
impressions = Table(
    "impressions",
    metadata,
    Column("recommendation_id", String(128), primary_key=True),
    Column("member_id", String(128), nullable=False),
    Column("shown_at", DateTime(timezone=True), nullable=False),
    Column("placement", String(128), nullable=False),
    Column("experiment_id", String(128), nullable=False),
    Column("variant", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("degraded", Boolean, nullable=False),
    # The items in the order shown (position = index + 1), a JSON array.
    Column("item_ids", Text, nullable=False),
    # The gateway's serving latency of the answer; NULL when the impression did not say
    # (kept before it was logged, or a shop's own).
    Column("latency_ms", Float),
    Index("ix_impressions_member", "member_id", "shown_at"),
    Index("ix_impressions_experiment", "experiment_id", "shown_at"),
)
# Every click, add to cart, purchase and refund, with its attribution once it has one (the
# recommendation_id ... revenue columns; NULL and 0 before). `claimed` is the
# recommendation_id the event carried.
outcomes = Table(
    "outcomes",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("member_id", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("claimed", String(128)),
    Column("order_id", String(128)),
    # [[item_id, quantity, unit price or null], ...] as JSON (attribution.priced_lines).
    Column("lines", Text, nullable=False),
    # Purchases: the order's value; refunds: the revenue refunded.
    Column("amount", Float, nullable=False),
    Column("recommendation_id", String(128)),
    Column("experiment_id", String(128)),
    Column("variant", String(128)),
    Column("shown_at", DateTime(timezone=True)),
    Column("attributed_by", String(32)),
    # The outcome's items the impression showed, a JSON array.
    Column("item_ids", Text, nullable=False),
    Column("revenue", Float, nullable=False),
    # What refunds of the order reversed of `revenue`.
    Column("refunded", Float, nullable=False),
    # A purchase's coupon code as compared with exposures' (coupons.coupon_key); NULL for
    # none, and for purchases kept before campaigns were measured.
    Column("coupon", String(128)),
    Index("ix_outcomes_member", "member_id", "at"),
    Index("ix_outcomes_order", "member_id", "order_id"),
    Index("ix_outcomes_claimed", "claimed"),
    Index("ix_outcomes_experiment", "experiment_id", "shown_at"),
)
# Purchases less refunds per member and UTC day, every purchase attributed or not: CUPED's
# covariate is a member's spend before an experiment.
member_spend = Table(
    "member_spend",
    metadata,
    Column("member_id", String(128), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("spend", Float, nullable=False),
)
# Ids of the events applied, for idempotency: pruned past FleetSettings'
# processed_retention_hours by prune_processed, as profiles does.
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    Index("ix_processed_events_processed_at", "processed_at"),
)
# Every exposure of a member to a campaign (services/common/exposures.py): `group_name` is
# "treatment" or "control", `coupon_code` the code given as coupons.coupon_key keeps it.
campaign_exposures = Table(
    "campaign_exposures",
    metadata,
    Column("exposure_id", String(128), primary_key=True),
    Column("campaign_id", String(128), nullable=False),
    Column("member_id", String(128), nullable=False),
    Column("group_name", String(16), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("offer_id", String(128), nullable=False),
    Column("coupon_code", String(128), nullable=False),
    Column("tier", String(128), nullable=False),
    Index("ix_campaign_exposures_campaign", "campaign_id", "member_id", "at"),
    Index("ix_campaign_exposures_member", "member_id"),
)
erasures = erasures_table(metadata)
identity_links = links_table(metadata)
# Every table keyed by member id: an erasure empties each of them of the member, a link
# moves the visitor's rows to the member.
MEMBER_TABLES = (impressions, outcomes, member_spend, campaign_exposures)
# Ids per IN list: well under SQLite's limit of bound parameters per statement.
_CHUNK = 500
_OUTCOME_COLUMNS = tuple(c.name for c in outcomes.columns)
_SET_ATTRIBUTION = (
    update(outcomes)
    .where(outcomes.c.event_id == bindparam("key"))
    .values(
        recommendation_id=bindparam("recommendation_id"),
        experiment_id=bindparam("experiment_id"),
        variant=bindparam("variant"),
        shown_at=bindparam("shown_at"),
        attributed_by=bindparam("attributed_by"),
        item_ids=bindparam("item_ids"),
        revenue=bindparam("revenue"),
    )
)
_SET_REFUNDED = (
    update(outcomes)
    .where(outcomes.c.event_id == bindparam("key"))
    .values(refunded=bindparam("refunded"))
)


class SqlAnalyticsStore(AnalyticsStore):
    """On SQLite or PostgreSQL. `secret` keys the tombstones' member digests: the fleet's PII
    secret, so that they survive restarts (a random one otherwise, for tests)."""

    def __init__(
        self, engine: Engine, settings: AnalyticsSettings, secret: bytes | None = None
    ) -> None:
        self._engine = engine
        self.embedded = is_embedded(engine)
        self._secret = secret if secret is not None else os.urandom(32)
        self._window = timedelta(hours=settings.attribution_window_hours)
        self._pre_period = timedelta(days=settings.pre_period_days)
        upgrade(engine, "analytics")

    @classmethod
    def from_url(
        cls, url: str, settings: AnalyticsSettings, secret: bytes | None = None
    ) -> SqlAnalyticsStore:
        return cls(make_engine(url), settings, secret)

    # Applying events.

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        with self._engine.begin() as conn:
            todo = unapplied(conn, processed_events.c.event_id, events)
            if not todo:
                return 0
            # Wall-clock time, as the bus's retention counts it (not the fleet clock).
            now = datetime.now(UTC)
            insert_ignore(conn, processed_events, [(e.event_id, now) for e in todo])
            todo = followed(conn, self._secret, erasures, identity_links, todo)
            shown = _save_impressions(conn, [i for e in todo if (i := impression_of(e))])
            new = _new_outcomes(conn, [o for e in todo if (o := outcome_of(e))])
            earlier = self._claimable(conn, shown)
            self._attribute(conn, new, earlier)
            _add_spend(conn, _spend_of(new))
        return len(todo)

    def _digest(self, member_id: str) -> str:
        return member_digest(self._secret, member_id)

    def apply_exposures(self, exposures: Sequence[Exposure]) -> int:
        with self._engine.begin() as conn:
            first = by_exposure_id(exposures)
            new = set(unseen(conn, campaign_exposures.c.exposure_id, list(first)))
            todo = self._followed(conn, [x for key, x in first.items() if key in new])
            insert_ignore(conn, campaign_exposures, [_exposure_row(x) for x in todo])
        return len(todo)

    def _followed(self, conn: Connection, exposures: list[Exposure]) -> list[Exposure]:
        """The exposures with linked visitors as their members, without those from before
        an erasure of their member (or of the visitor they came as), as events are."""
        exposures = self._unerased(conn, exposures)
        links = resolve_links(conn, identity_links, [x.member_id for x in exposures])
        if not links:
            return exposures
        relabelled = [
            msgspec.structs.replace(x, member_id=links[x.member_id]) if x.member_id in links else x
            for x in exposures
        ]
        return self._unerased(conn, relabelled)

    def _unerased(self, conn: Connection, exposures: list[Exposure]) -> list[Exposure]:
        digests = {m: self._digest(m) for m in {x.member_id for x in exposures}}
        tombstones = erased_since(conn, erasures, digests.values())
        return [
            x
            for x in exposures
            if (erased_at := tombstones.get(digests[x.member_id])) is None or x.at >= erased_at
        ]

    def _claimable(self, conn: Connection, shown: Sequence[Impression]) -> list[Outcome]:
        """The outcomes already kept that the new impressions may be owed (they arrived
        first): those naming one, and the member's within the window after one."""
        if not shown:
            return []
        o = outcomes.c
        found: dict[str, Outcome] = {}
        named = [i.recommendation_id for i in shown]
        for chunk in _chunks(named):
            query = select(outcomes).where(o.claimed.in_(chunk), o.kind != REFUND)
            found.update((row.event_id, _outcome(row)) for row in conn.execute(query))
        by_member = _by_member(shown)
        for members in _chunks(list(by_member)):
            lo = min(i.shown_at for m in members for i in by_member[m])
            hi = max(i.shown_at for m in members for i in by_member[m]) + self._window
            query = select(outcomes).where(
                o.member_id.in_(members), o.at >= lo, o.at <= hi, o.kind != REFUND
            )
            found.update((row.event_id, _outcome(row)) for row in conn.execute(query))
        return [
            outcome
            for outcome in found.values()
            if any(
                may_claim(i, outcome, self._window) for i in by_member.get(outcome.member_id, ())
            )
        ]

    def _attribute(
        self, conn: Connection, new: Sequence[Outcome], earlier: Sequence[Outcome]
    ) -> None:
        """Attribute the new outcomes and store them; attribute the earlier ones again and
        store what changed; then the refunds of every order concerned."""
        subjects = [o for o in (*new, *earlier) if o.kind != REFUND]
        named = _impressions_by_id(conn, {o.claimed for o in subjects if o.claimed})
        around = self._impressions_around(conn, subjects)
        attributed = {
            o.event_id: attribute(
                o, named.get(o.claimed or ""), around.get(o.member_id, ()), self._window
            )
            for o in subjects
        }
        insert_ignore(
            conn,
            outcomes,
            [_outcome_row(o, attributed.get(o.event_id)) for o in new],
            _OUTCOME_COLUMNS,
        )
        changed = [
            o for o in earlier if o.kind != REFUND and attributed[o.event_id] != o.attribution
        ]
        if changed:
            conn.execute(
                _SET_ATTRIBUTION,
                [_attribution_values(o.event_id, attributed[o.event_id]) for o in changed],
            )
        orders = {
            (o.member_id, o.order_id)
            for o in (*new, *changed)
            if o.order_id and o.kind in (PURCHASE, REFUND)
        }
        _reverse_refunds(conn, orders)

    def _impressions_around(
        self, conn: Connection, subjects: Sequence[Outcome]
    ) -> dict[str, list[Impression]]:
        """Per member of `subjects`, their impressions shown within the window before any
        of their outcomes there (a superset: attribute picks)."""
        by_member: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in subjects:
            by_member[outcome.member_id].append(outcome)
        found: dict[str, list[Impression]] = defaultdict(list)
        i = impressions.c
        for members in _chunks(list(by_member)):
            lo = min(o.at for m in members for o in by_member[m]) - self._window
            hi = max(o.at for m in members for o in by_member[m])
            query = select(impressions).where(
                i.member_id.in_(members), i.shown_at >= lo, i.shown_at <= hi
            )
            for row in conn.execute(query):
                found[row.member_id].append(_impression(row))
        return found

    # Members-topic commands.

    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        erased = False
        with self._engine.begin() as conn:
            for command in commands:
                if isinstance(command, Erase):
                    erased = self._erase(conn, command) or erased
                elif isinstance(command, Link):
                    self._link(conn, command)
        if erased:
            # Deleted rows are zeroed (secure_delete); the WAL still holds the pages as they
            # were until a checkpoint, so checkpoint now: no file keeps the member.
            scrub_freed(self._engine)

    def _erase(self, conn: Connection, command: Erase) -> bool:
        seen = select(erasures.c.erasure_id).where(erasures.c.erasure_id == command.erasure_id)
        if conn.execute(seen).first() is not None:
            # Delivered again (a crash before the bus commit, a replay): what the member
            # did since the erasure is a new life, not to be wiped.
            return False
        visitors = forget_links(conn, identity_links, command.member_id)
        ids = [command.member_id, *visitors]
        removed = 0
        for table in MEMBER_TABLES:
            done = conn.execute(delete(table).where(table.c.member_id.in_(ids)))
            removed += max(done.rowcount, 0)
        now = datetime.now(UTC)
        record_erasure(conn, erasures, command, self._digest(command.member_id), removed, now)
        for visitor in visitors:
            record_erasure(
                conn,
                erasures,
                self._visitor_erasure(command, visitor),
                self._digest(visitor),
                0,
                now,
            )
        return True

    def _visitor_erasure(self, command: Erase, visitor_id: str) -> Erase:
        """The erasure of a visitor linked to the erased member: its own audit entry, under
        an id derived from the member's erasure (the same on every replay)."""
        derived = uuid.uuid5(uuid.NAMESPACE_URL, f"{command.erasure_id}/{self._digest(visitor_id)}")
        return Erase(member_id=visitor_id, erasure_id=str(derived), at=command.at)

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

    def _merge(self, conn: Connection, visitor_id: str, member_id: str) -> None:
        """The visitor's rows become the member's, and the member's outcomes are attributed
        again: some may now be owed to the visitor's impressions, and the other way round."""
        for table in (impressions, outcomes, campaign_exposures):
            conn.execute(
                update(table).where(table.c.member_id == visitor_id).values(member_id=member_id)
            )
        s = member_spend.c
        spent = conn.execute(select(s.day, s.spend).where(s.member_id == visitor_id)).all()
        conn.execute(delete(member_spend).where(s.member_id == visitor_id))
        _add_spend(conn, {(member_id, day): spend for day, spend in spent})
        query = select(outcomes).where(outcomes.c.member_id == member_id)
        theirs = [_outcome(row) for row in conn.execute(query)]
        self._attribute(conn, [], theirs)
        _reverse_refunds(conn, {(member_id, o.order_id) for o in theirs if o.order_id})

    # Reading.

    def impression(self, recommendation_id: str) -> Impression | None:
        with self._engine.connect() as conn:
            return _impressions_by_id(conn, {recommendation_id}).get(recommendation_id)

    def outcomes(self, member_id: str) -> list[Outcome]:
        o = outcomes.c
        query = select(outcomes).where(o.member_id == member_id).order_by(o.at, o.event_id)
        with self._engine.connect() as conn:
            return [_outcome(row) for row in conn.execute(query)]

    def daily_spend(self, member_id: str) -> dict[date, float]:
        s = member_spend.c
        query = select(s.day, s.spend).where(s.member_id == member_id).order_by(s.day)
        with self._engine.connect() as conn:
            return {day: float(spend) for day, spend in conn.execute(query)}

    def experiment_figures(
        self,
        experiment_id: str,
        started_at: datetime | None = None,
        stopped_at: datetime | None = None,
    ) -> ExperimentFigures:
        i = impressions.c
        with self._engine.connect() as conn:
            if started_at is None:
                first = select(func.min(i.shown_at)).where(
                    i.experiment_id == experiment_id,
                    *([i.shown_at < stopped_at] if stopped_at else []),
                )
                found = conn.execute(first).scalar()
                if found is None:
                    return ExperimentFigures({}, 0, None, stopped_at)
                started_at = _utc(found)
            # Three aggregates, each over an index, joined here by member id: SQLite ran one
            # statement joining the grouped subqueries as nested loops (13 minutes at
            # 100,000 members, where these three take 2.6 s; 1.3 s on PostgreSQL).
            exposed = conn.execute(self._exposed(experiment_id, started_at, stopped_at)).all()
            won = {
                row[0]: row[1:]
                for row in conn.execute(self._won(experiment_id, started_at, stopped_at))
            }
            spent: dict[str, float] = {
                member_id: spend
                for member_id, spend in conn.execute(
                    self._spent(experiment_id, started_at, stopped_at)
                )
            }
            timed = conn.execute(_latencies(experiment_id, started_at, stopped_at)).all()
        nothing = (0, 0, 0, 0.0, 0.0)
        crossed = 0
        by_variant: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for member_id, variant, shown, lowest, highest in exposed:
            crossed += lowest != highest
            *counted, refunded_ = won.get(member_id, nothing)
            by_variant[variant].append((shown, *counted, spent.get(member_id, 0.0), refunded_))
        variants = {name: MemberFigures.of(rows) for name, rows in by_variant.items()}
        latencies: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for variant, latency, count in timed:
            latencies[variant].append((latency, count))
        return ExperimentFigures(
            variants,
            crossed,
            started_at,
            stopped_at,
            {name: Latencies.of(rows) for name, rows in latencies.items()},
        )

    def _exposed(
        self, experiment_id: str, started_at: datetime, stopped_at: datetime | None
    ) -> Select[Any]:
        """Per member shown the experiment in the window: the variant shown first, the
        impressions, and the least and greatest variant (two differ: several variants)."""
        i = impressions.c
        ranked = (
            select(
                i.member_id,
                i.variant,
                func.row_number()
                .over(partition_by=i.member_id, order_by=(i.shown_at, i.recommendation_id))
                .label("rank"),
                func.count().over(partition_by=i.member_id).label("impressions"),
                func.min(i.variant).over(partition_by=i.member_id).label("lowest"),
                func.max(i.variant).over(partition_by=i.member_id).label("highest"),
            )
            .where(*_shown_within(experiment_id, started_at, stopped_at))
            .subquery("ranked")
        )
        r = ranked.c
        return select(r.member_id, r.variant, r.impressions, r.lowest, r.highest).where(r.rank == 1)

    def _won(
        self, experiment_id: str, started_at: datetime, stopped_at: datetime | None
    ) -> Select[Any]:
        """Per member, the clicks, carts and purchases attributed to the experiment's
        impressions of the window, their revenue less refunds, and what refunds reversed."""
        o = outcomes.c
        owed = [o.experiment_id == experiment_id, o.shown_at >= started_at]
        if stopped_at is not None:
            owed.append(o.shown_at < stopped_at)
        return (
            select(
                o.member_id,
                _count(o.kind == CLICK),
                _count(o.kind == ADD_TO_CART),
                _count(o.kind == PURCHASE),
                func.sum(o.revenue - o.refunded),
                func.sum(o.refunded),
            )
            .where(*owed)
            .group_by(o.member_id)
        )

    def _spent(
        self, experiment_id: str, started_at: datetime, stopped_at: datetime | None
    ) -> Select[Any]:
        """Per member of the experiment, their spend over the pre-period before it started
        (whole UTC days)."""
        i, s = impressions.c, member_spend.c
        members = select(i.member_id).where(*_shown_within(experiment_id, started_at, stopped_at))
        pre_from = (started_at - self._pre_period).date()
        return (
            select(s.member_id, func.sum(s.spend))
            .where(s.member_id.in_(members), s.day >= pre_from, s.day < started_at.date())
            .group_by(s.member_id)
        )

    def campaign_figures(
        self, campaign_id: str, window: timedelta, as_of: datetime
    ) -> CampaignFigures:
        with self._engine.connect() as conn:
            # Four aggregates joined here by member id, as experiment_figures does; the
            # purchases' ones start from each member's first exposure alone (a grouped
            # minimum over the index), cheaper than ranking the exposures again.
            exposed = conn.execute(_first_exposures(campaign_id)).all()
            if not exposed:
                return CampaignFigures({})
            starts = _starts(campaign_id)
            within = _within(conn.dialect.name, window)
            bought = {row[0]: row[1:] for row in conn.execute(_bought(campaign_id, starts, within))}
            refunds = _refunds(conn, starts, within)
            exposures = _channels(conn, campaign_id)
        nothing = (0, 0.0, 0)
        by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
        crossed = still_open = coupon_orders = 0
        for member_id, group, first_at, lowest, highest in exposed:
            purchases, value, with_coupon = bought.get(member_id, nothing)
            by_group[group].append((float(purchases > 0), value - refunds.get(member_id, 0.0)))
            crossed += lowest != highest
            still_open += _utc(first_at) + window > as_of
            if group == TREATMENT:
                coupon_orders += with_coupon
        groups = {name: GroupMembers.of(rows) for name, rows in by_group.items()}
        return CampaignFigures(groups, exposures, coupon_orders, crossed, still_open)

    def prune_processed(self, before: datetime, batch: int = 10_000) -> int:
        # A batch per transaction: the consumer's writes wait for one batch at most.
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


def _shown_within(
    experiment_id: str, started_at: datetime, stopped_at: datetime | None
) -> list[ColumnElement[bool]]:
    i = impressions.c
    shown = [i.experiment_id == experiment_id, i.shown_at >= started_at]
    if stopped_at is not None:
        shown.append(i.shown_at < stopped_at)
    return shown


def _latencies(
    experiment_id: str, started_at: datetime, stopped_at: datetime | None
) -> Select[Any]:
    """Per variant, each distinct serving latency of its impressions in the window and how
    many had it: exact percentiles from a few thousand rows (the gateway logs them to 10 µs)
    instead of one row per impression."""
    i = impressions.c
    return (
        select(i.variant, i.latency_ms, func.count())
        .where(*_shown_within(experiment_id, started_at, stopped_at), i.latency_ms.is_not(None))
        .group_by(i.variant, i.latency_ms)
    )


def _count(condition: ColumnElement[bool]) -> Any:
    return func.sum(case((condition, 1), else_=0))


def _first_exposures(campaign_id: str) -> Select[Any]:
    """Per member exposed to the campaign: the group and instant of their first exposure,
    and the least and greatest group (two differ: the member was in both)."""
    x = campaign_exposures.c
    ranked = (
        select(
            x.member_id,
            x.group_name,
            x.at,
            func.row_number()
            .over(partition_by=x.member_id, order_by=(x.at, x.exposure_id))
            .label("rank"),
            func.min(x.group_name).over(partition_by=x.member_id).label("lowest"),
            func.max(x.group_name).over(partition_by=x.member_id).label("highest"),
        )
        .where(x.campaign_id == campaign_id)
        .subquery("ranked")
    )
    r = ranked.c
    return select(r.member_id, r.group_name, r.at, r.lowest, r.highest).where(r.rank == 1)


def _starts(campaign_id: str) -> Subquery:
    """Per member exposed to the campaign, when their window starts: the first exposure."""
    x = campaign_exposures.c
    return (
        select(x.member_id, func.min(x.at).label("first_at"))
        .where(x.campaign_id == campaign_id)
        .group_by(x.member_id)
        .subquery("starts")
    )


def _channels(conn: Connection, campaign_id: str) -> dict[str, int]:
    """Treatment exposures per channel (held-out members are sent nothing)."""
    x = campaign_exposures.c
    query = (
        select(x.channel, func.count())
        .where(x.campaign_id == campaign_id, x.group_name == TREATMENT)
        .group_by(x.channel)
    )
    return {channel: int(count) for channel, count in conn.execute(query)}


Within = Callable[[Any, Any], ColumnElement[bool]]


def _within(dialect: str, window: timedelta) -> Within:
    """`within(at, since)`: since <= at < since + window, in the database's own date
    arithmetic (one statement for every member, each with their own since)."""
    if dialect == "sqlite":
        # SQLite keeps instants as text; julianday reads them (to the millisecond).
        days = window.total_seconds() / 86_400
        return lambda at, since: and_(
            at >= since, func.julianday(at) < func.julianday(since) + days
        )
    span = bindparam("window", window, type_=Interval())
    return lambda at, since: and_(at >= since, at < since + span)


def _bought(campaign_id: str, starts: Subquery, within: Within) -> Select[Any]:
    """Per member with a purchase in their window: the purchases, their value, and those
    carrying a coupon code one of their treatment exposures gave."""
    f, o, x = starts.c, outcomes.c, campaign_exposures.c
    given = exists().where(
        x.campaign_id == campaign_id,
        x.member_id == o.member_id,
        x.group_name == TREATMENT,
        x.coupon_code == o.coupon,
    )
    with_coupon = and_(o.coupon.is_not(None), given)
    return (
        select(f.member_id, func.count(), func.sum(o.amount), _count(with_coupon))
        .select_from(starts.join(outcomes, o.member_id == f.member_id))
        .where(o.kind == PURCHASE, within(o.at, f.first_at))
        .group_by(f.member_id)
    )


def _refunds(conn: Connection, starts: Subquery, within: Within) -> dict[str, float]:
    """Per member, what refunds of the orders bought in their window took back: whenever
    they came, at most each order's value. Few orders have refunds: few rows."""
    f, o = starts.c, outcomes.c
    counted = (
        select(o.member_id, o.order_id, func.sum(o.amount).label("value"))
        .select_from(starts.join(outcomes, o.member_id == f.member_id))
        .where(o.kind == PURCHASE, o.order_id.is_not(None), within(o.at, f.first_at))
        .group_by(o.member_id, o.order_id)
        .subquery("counted")
    )
    refunds = outcomes.alias("refunds")
    c, r = counted.c, refunds.c
    query = (
        select(c.member_id, c.value, func.sum(r.amount))
        .select_from(
            counted.join(refunds, and_(r.member_id == c.member_id, r.order_id == c.order_id))
        )
        .where(r.kind == REFUND)
        .group_by(c.member_id, c.order_id, c.value)
    )
    taken: dict[str, float] = defaultdict(float)
    for member_id, value, refunded_ in conn.execute(query):
        taken[member_id] += min(float(refunded_), float(value))
    return taken


def _new_outcomes(conn: Connection, kept: Sequence[Outcome]) -> list[Outcome]:
    """The outcomes not kept before (an event id the processed ids forgot may come back)."""
    new = set(unseen(conn, outcomes.c.event_id, [o.event_id for o in kept]))
    return [o for o in kept if o.event_id in new]


def _save_impressions(conn: Connection, shown: Sequence[Impression]) -> list[Impression]:
    """Record the impressions not recorded before (the first of a recommendation_id wins);
    those recorded now."""
    first: dict[str, Impression] = {}
    for impression in shown:
        first.setdefault(impression.recommendation_id, impression)
    new = set(unseen(conn, impressions.c.recommendation_id, list(first)))
    fresh = [impression for key, impression in first.items() if key in new]
    rows = [
        (
            i.recommendation_id,
            i.member_id,
            i.shown_at,
            i.placement,
            i.experiment_id,
            i.variant,
            i.model,
            i.degraded,
            _write_ids(i.item_ids),
            i.latency_ms,
        )
        for i in fresh
    ]
    insert_ignore(conn, impressions, rows)
    return fresh


def _impressions_by_id(conn: Connection, ids: Iterable[str]) -> dict[str, Impression]:
    found: dict[str, Impression] = {}
    for chunk in _chunks(list(ids)):
        query = select(impressions).where(impressions.c.recommendation_id.in_(chunk))
        found.update((row.recommendation_id, _impression(row)) for row in conn.execute(query))
    return found


def _reverse_refunds(conn: Connection, orders: Collection[tuple[str, str | None]]) -> None:
    """Work out again what the refunds of each order reverse of its purchases' attributed
    revenue, and store what changed. Orders without refunds (nearly all) reverse nothing:
    one look for refunds first, and only their orders are read whole."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for member_id, order_id in orders:
        if order_id:
            wanted[member_id].add(order_id)
    refunded_orders: dict[str, set[str]] = defaultdict(set)
    for row in _order_rows(conn, wanted, [REFUND]):
        refunded_orders[row.member_id].add(row.order_id)
    grouped: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for row in _order_rows(conn, refunded_orders, [PURCHASE, REFUND]):
        grouped[(row.member_id, row.order_id)].append(_outcome(row))
    changes: list[dict[str, Any]] = []
    for kept in grouped.values():
        purchases = [x for x in kept if x.kind == PURCHASE]
        reversed_ = refunded(purchases, [x for x in kept if x.kind == REFUND])
        changes.extend(
            {"key": p.event_id, "refunded": reversed_[p.event_id]}
            for p in purchases
            if abs(reversed_[p.event_id] - p.refunded) > 1e-9
        )
    if changes:
        conn.execute(_SET_REFUNDED, changes)


def _order_rows(
    conn: Connection, orders: dict[str, set[str]], kinds: list[str]
) -> Iterator[Row[Any]]:
    """The outcomes of `kinds` of each member's orders (member -> order ids)."""
    o = outcomes.c
    for members in _chunks(list(orders)):
        order_ids = list({order for m in members for order in orders[m]})
        for part in _chunks(order_ids):
            query = select(outcomes).where(
                o.member_id.in_(members), o.order_id.in_(part), o.kind.in_(kinds)
            )
            for row in conn.execute(query):
                if row.order_id in orders[row.member_id]:
                    yield row


def _spend_of(kept: Sequence[Outcome]) -> dict[tuple[str, date], float]:
    """Per member and UTC day, what their purchases added and their refunds took away."""
    spend: dict[tuple[str, date], float] = defaultdict(float)
    for outcome in kept:
        if outcome.kind == PURCHASE:
            spend[(outcome.member_id, outcome.at.date())] += outcome.amount
        elif outcome.kind == REFUND:
            spend[(outcome.member_id, outcome.at.date())] -= outcome.amount
    return spend


def _add_spend(conn: Connection, deltas: dict[tuple[str, date], float]) -> None:
    if not deltas:
        return
    s = member_spend.c
    totals = dict(deltas)
    members = list({member_id for member_id, _ in deltas})
    days = list({day for _, day in deltas})
    for chunk in _chunks(members):
        for part in _chunks(days):
            query = select(s.member_id, s.day, s.spend).where(
                s.member_id.in_(chunk), s.day.in_(part)
            )
            for member_id, day, spend in conn.execute(query):
                if (member_id, day) in totals:
                    totals[(member_id, day)] += spend
    rows = [(member_id, day, spend) for (member_id, day), spend in totals.items()]
    upsert(conn, member_spend, rows, keys=["member_id", "day"])


def _outcome_row(outcome: Outcome, attribution: Attribution | None) -> tuple[Any, ...]:
    values = _attribution_values(outcome.event_id, attribution)
    return (
        outcome.event_id,
        outcome.member_id,
        outcome.kind,
        outcome.at,
        outcome.claimed,
        outcome.order_id,
        _write_lines(outcome.lines),
        outcome.amount,
        values["recommendation_id"],
        values["experiment_id"],
        values["variant"],
        values["shown_at"],
        values["attributed_by"],
        values["item_ids"],
        values["revenue"],
        0.0,
        outcome.coupon,
    )


def _attribution_values(event_id: str, attribution: Attribution | None) -> dict[str, Any]:
    if attribution is None:
        return {
            "key": event_id,
            "recommendation_id": None,
            "experiment_id": None,
            "variant": None,
            "shown_at": None,
            "attributed_by": None,
            "item_ids": "[]",
            "revenue": 0.0,
        }
    return {
        "key": event_id,
        "recommendation_id": attribution.recommendation_id,
        "experiment_id": attribution.experiment_id,
        "variant": attribution.variant,
        "shown_at": attribution.shown_at,
        "attributed_by": attribution.by,
        "item_ids": _write_ids(attribution.item_ids),
        "revenue": attribution.revenue,
    }


def _outcome(row: Row[Any]) -> Outcome:
    attribution = None
    if row.recommendation_id is not None:
        attribution = Attribution(
            recommendation_id=row.recommendation_id,
            experiment_id=row.experiment_id,
            variant=row.variant,
            shown_at=_utc(row.shown_at),
            by=row.attributed_by,
            item_ids=tuple(_read_ids(row.item_ids)),
            revenue=float(row.revenue),
        )
    return Outcome(
        event_id=row.event_id,
        kind=row.kind,
        member_id=row.member_id,
        at=_utc(row.at),
        lines=tuple(Line(*line) for line in _read_lines(row.lines)),
        claimed=row.claimed,
        order_id=row.order_id,
        amount=float(row.amount),
        attribution=attribution,
        refunded=float(row.refunded),
        coupon=row.coupon,
    )


def _exposure_row(exposure: Exposure) -> tuple[Any, ...]:
    return (
        exposure.exposure_id,
        exposure.campaign_id,
        exposure.member_id,
        exposure.group,
        exposure.channel,
        exposure.at,
        exposure.offer_id,
        coupon_key(exposure.coupon_code),
        exposure.tier,
    )


def _impression(row: Row[Any]) -> Impression:
    return Impression(
        recommendation_id=row.recommendation_id,
        member_id=row.member_id,
        shown_at=_utc(row.shown_at),
        item_ids=tuple(_read_ids(row.item_ids)),
        placement=row.placement,
        experiment_id=row.experiment_id,
        variant=row.variant,
        model=row.model,
        degraded=bool(row.degraded),
        latency_ms=row.latency_ms,
    )


def _by_member(shown: Sequence[Impression]) -> dict[str, list[Impression]]:
    found: dict[str, list[Impression]] = defaultdict(list)
    for impression in shown:
        found[impression.member_id].append(impression)
    return found


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_encoder = msgspec.json.Encoder()
_read_ids = msgspec.json.Decoder(list[str]).decode
_read_lines = msgspec.json.Decoder(list[tuple[str, int, float | None]]).decode


def _write_ids(item_ids: Sequence[str]) -> str:
    return _encoder.encode(list(item_ids)).decode("utf-8")


def _write_lines(lines: Sequence[Line]) -> str:
    return _encoder.encode([(x.item_id, x.quantity, x.unit_price) for x in lines]).decode("utf-8")
