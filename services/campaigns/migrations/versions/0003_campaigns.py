"""Campaigns, their exposures (the frequency caps' record), coupon codes and redemptions.

Revision ID: 0003_campaigns
Revises: 0002_merchandising
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_campaigns"
down_revision = "0002_merchandising"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "exposures",
        sa.Column("exposure_id", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("grp", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("coupon_code", sa.String(64), nullable=False),
        sa.Column("tier", sa.String(40), nullable=False),
    )
    op.create_index("ix_exposures_member", "exposures", ["member_id", "channel", "at"])
    op.create_index("ix_exposures_campaign", "exposures", ["campaign_id", "channel"])
    op.create_table(
        "cap_locks",
        sa.Column("member_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("taken", sa.Integer(), nullable=False),
    )
    op.create_table(
        "coupon_codes",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ux_coupon_codes_member", "coupon_codes", ["campaign_id", "member_id"], unique=True
    )
    op.create_table(
        "redemptions",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("order_key", sa.String(128), primary_key=True),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_redemptions_member", "redemptions", ["member_id"])
    op.create_table(
        "member_erasures",
        sa.Column("erasure_id", sa.String(64), primary_key=True),
        sa.Column("member_digest", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
    )
    op.create_index("ix_member_erasures_digest", "member_erasures", ["member_digest"])
    op.create_table(
        "identity_links",
        sa.Column("anonymous_id", sa.String(128), primary_key=True),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_identity_links_member", "identity_links", ["member_id"])


def downgrade() -> None:
    for table in (
        "identity_links",
        "member_erasures",
        "redemptions",
        "coupon_codes",
        "cap_locks",
        "exposures",
        "campaigns",
    ):
        op.drop_table(table)
