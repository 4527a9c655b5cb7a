"""Baseline: the retrieval schema of the release before migrations (commit 3da77a1).

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
        "interactions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "line", name="uq_interactions_event_line"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_interactions_member", "interactions", ["member_id", "id"], if_not_exists=True
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
    op.drop_table("catalog_items")
    op.drop_index("ix_interactions_member", table_name="interactions")
    op.drop_table("interactions")
