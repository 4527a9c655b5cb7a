"""The stores' schema as the release before migrations made it (commit 3da77a1), frozen.

Copied from that release's table definitions, never imported from today's stores: the
tests build old data dirs with it and check each service's baseline revision against it.
That release made every table with `metadata.create_all` and kept no version table.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def _catalog(metadata: MetaData) -> Table:
    return Table(
        "catalog_items",
        metadata,
        Column("item_id", String(128), primary_key=True),
        Column("name", String(500)),
        Column("category", String(128)),
        Column("price", Float),
        Column("in_stock", Boolean, nullable=False, default=True),
    )


profiles = MetaData()
Table(
    "members",
    profiles,
    Column("member_id", String(128), primary_key=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("last_order_at", DateTime(timezone=True)),
    Column("orders", Integer, nullable=False),
    Column("spend", Float, nullable=False),
    Column("events", Integer, nullable=False),
    Column("recent", Text, nullable=False),
    Column("first_order_at", DateTime(timezone=True)),
    Column("discounted_orders", Integer, nullable=False),
    Column("channels", Text, nullable=False),
)
Table(
    "member_categories",
    profiles,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("category", String(128), primary_key=True),
    Column("weight", Float, nullable=False),
    Column("events", Integer, nullable=False),
    Column("affinity", Float, nullable=False),
    Column("affinity_at_s", Float),
    Column("last_purchase_at_s", Float),
    Column("paid_units", Integer, nullable=False),
    Column("paid_amount", Float, nullable=False),
)
Table(
    "member_tags",
    profiles,
    Column("member_id", ForeignKey("members.member_id"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("set_at", DateTime(timezone=True), nullable=False),
)
Table(
    "portrait_scoring",
    profiles,
    Column("name", String(32), primary_key=True),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
)
Table(
    "member_purchases",
    profiles,
    Column("member_id", String(128), primary_key=True),
    Column("item_id", String(128), primary_key=True),
)
Table(
    "member_orders",
    profiles,
    Column("member_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
)
Table("processed_events", profiles, Column("event_id", String(128), primary_key=True))
_catalog(profiles)

retrieval = MetaData()
Table(
    "interactions",
    retrieval,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False),
    Column("line", Integer, nullable=False),
    Column("member_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("weight", Float, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("event_id", "line", name="uq_interactions_event_line"),
    Index("ix_interactions_member", "member_id", "id"),
)
_catalog(retrieval)

campaigns = MetaData()
_catalog(campaigns)

gateway = MetaData()
Table(
    "access_keys",
    gateway,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("scopes", String(500), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

# Ranking kept nothing then, and analytics did not exist.
ranking = MetaData()
analytics = MetaData()
SCHEMAS = {
    "profiles": profiles,
    "retrieval": retrieval,
    "campaigns": campaigns,
    "gateway": gateway,
    "ranking": ranking,
    "analytics": analytics,
}
