"""Analytics' first tables: impressions, outcomes and their attribution, members' daily
spend, processed event ids, erasure tombstones and identity links.

Revision ID: 0002_impressions_outcomes
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_impressions_outcomes"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("recommendation_id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("placement", sa.String(128), nullable=False),
        sa.Column("experiment_id", sa.String(128), nullable=False),
        sa.Column("variant", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("item_ids", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("recommendation_id"),
    )
    op.create_index("ix_impressions_member", "impressions", ["member_id", "shown_at"])
    op.create_index("ix_impressions_experiment", "impressions", ["experiment_id", "shown_at"])
    op.create_table(
        "outcomes",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed", sa.String(128), nullable=True),
        sa.Column("order_id", sa.String(128), nullable=True),
        sa.Column("lines", sa.Text(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("recommendation_id", sa.String(128), nullable=True),
        sa.Column("experiment_id", sa.String(128), nullable=True),
        sa.Column("variant", sa.String(128), nullable=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attributed_by", sa.String(32), nullable=True),
        sa.Column("item_ids", sa.Text(), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("refunded", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_outcomes_member", "outcomes", ["member_id", "at"])
    op.create_index("ix_outcomes_order", "outcomes", ["member_id", "order_id"])
    op.create_index("ix_outcomes_claimed", "outcomes", ["claimed"])
    op.create_index("ix_outcomes_experiment", "outcomes", ["experiment_id", "shown_at"])
    op.create_table(
        "member_spend",
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("spend", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("member_id", "day"),
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])
    op.create_table(
        "member_erasures",
        sa.Column("erasure_id", sa.String(64), nullable=False),
        sa.Column("member_digest", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("erasure_id"),
    )
    op.create_index("ix_member_erasures_digest", "member_erasures", ["member_digest"])
    op.create_table(
        "identity_links",
        sa.Column("anonymous_id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("anonymous_id"),
    )
    op.create_index("ix_identity_links_member", "identity_links", ["member_id"])


def downgrade() -> None:
    for table in (
        "identity_links",
        "member_erasures",
        "processed_events",
        "member_spend",
        "outcomes",
        "impressions",
    ):
        op.drop_table(table)
