"""Merchandising: the rules, and the catalog's brand, tags and attributes they read.

The catalog's new columns are nullable: rows of earlier releases have none of them (no
brand, no tags) until the shop sends the item again. `changed_at_s` tells replicas which
rows to read again; rows without one are read when a replica starts.

Revision ID: 0002_merchandising
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_merchandising"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_items") as batch:
        batch.add_column(sa.Column("brand", sa.String(128), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("attributes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("changed_at_s", sa.Float(), nullable=True))
        batch.create_index("ix_catalog_items_changed", ["changed_at_s"])
    op.create_table(
        "merchandising_rules",
        sa.Column("rule_id", sa.String(64), nullable=False),
        sa.Column("placement", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rule_id"),
        if_not_exists=True,
    )
    op.create_index("ix_merchandising_rules_placement", "merchandising_rules", ["placement"])


def downgrade() -> None:
    op.drop_table("merchandising_rules")
    with op.batch_alter_table("catalog_items") as batch:
        batch.drop_index("ix_catalog_items_changed")
        batch.drop_column("changed_at_s")
        batch.drop_column("attributes")
        batch.drop_column("tags")
        batch.drop_column("brand")
