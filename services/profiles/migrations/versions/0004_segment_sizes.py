"""Segment sizes per day, for their trend.

Revision ID: 0004_segment_sizes
Revises: 0003_consent_segments_identity
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_segment_sizes"
down_revision = "0003_consent_segments_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_sizes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_sizes")
