"""Baseline: the profiles schema of the release before migrations (commit 3da77a1).

Each table is created unless it is there already: a database made by that release has
them all (services.common.migrations then stamps this revision instead), and one it
left half-made keeps what it has.

Revision ID: 0001_baseline
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("spend", sa.Float(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("recent", sa.Text(), nullable=False),
        sa.Column("first_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("discounted_orders", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("member_id"),
        if_not_exists=True,
    )
    op.create_table(
        "member_categories",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("affinity", sa.Float(), nullable=False),
        sa.Column("affinity_at_s", sa.Float(), nullable=True),
        sa.Column("last_purchase_at_s", sa.Float(), nullable=True),
        sa.Column("paid_units", sa.Integer(), nullable=False),
        sa.Column("paid_amount", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"]),
        sa.PrimaryKeyConstraint("member_id", "category"),
        if_not_exists=True,
    )
    op.create_table(
        "member_tags",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["members.member_id"]),
        sa.PrimaryKeyConstraint("member_id", "tag"),
        if_not_exists=True,
    )
    op.create_table(
        "portrait_scoring",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )
    op.create_table(
        "member_purchases",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "item_id"),
        if_not_exists=True,
    )
    op.create_table(
        "member_orders",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "order_id"),
        if_not_exists=True,
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        if_not_exists=True,
    )
    op.create_table(
        "catalog_items",
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(500), nullable=True),
        sa.Column("category", sa.String(128), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("in_stock", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("item_id"),
        if_not_exists=True,
    )


def downgrade() -> None:
    for table in (
        "catalog_items",
        "processed_events",
        "member_orders",
        "member_purchases",
        "portrait_scoring",
        "member_tags",
        "member_categories",
        "members",
    ):
        op.drop_table(table)
