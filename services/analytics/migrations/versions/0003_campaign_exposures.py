"""Campaign exposures (treatment and held-out control members), and the coupon code of
purchases, to measure campaigns against their control group.

Purchases kept before this revision have no coupon code: they count as purchases, never as
coupon orders.

Revision ID: 0003_campaign_exposures
Revises: 0002_impressions_outcomes
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_campaign_exposures"
down_revision = "0002_impressions_outcomes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_exposures",
        sa.Column("exposure_id", sa.String(128), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("group_name", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offer_id", sa.String(128), nullable=False),
        sa.Column("coupon_code", sa.String(128), nullable=False),
        sa.Column("tier", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("exposure_id"),
    )
    op.create_index(
        "ix_campaign_exposures_campaign", "campaign_exposures", ["campaign_id", "member_id", "at"]
    )
    op.create_index("ix_campaign_exposures_member", "campaign_exposures", ["member_id"])
    # A nullable column: SQLite adds it in place, without copying the table.
    op.add_column("outcomes", sa.Column("coupon", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("coupon")
    op.drop_table("campaign_exposures")
