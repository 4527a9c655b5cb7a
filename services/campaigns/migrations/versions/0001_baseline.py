"""Baseline: the campaigns schema of the release before migrations (commit 3da77a1).

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
