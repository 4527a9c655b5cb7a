"""Consent choices, saved segments, identity links and erasure tombstones.

Revision ID: 0003_consent_segments_identity
Revises: 0002_processed_at
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_consent_segments_identity"
down_revision = "0002_processed_at"
branch_labels = None
depends_on = None

CONSENT_KEYS = ("personalization", "email", "sms", "push", "onsite")


def upgrade() -> None:
    op.create_table(
        "member_consent",
        sa.Column("member_id", sa.String(128), primary_key=True),
        *(sa.Column(key, sa.Boolean) for key in CONSENT_KEYS),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "segment_definitions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "member_erasures",
        sa.Column("erasure_id", sa.String(64), primary_key=True),
        sa.Column("member_digest", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.Integer, nullable=False),
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
    op.drop_index("ix_identity_links_member", table_name="identity_links")
    op.drop_table("identity_links")
    op.drop_index("ix_member_erasures_digest", table_name="member_erasures")
    op.drop_table("member_erasures")
    op.drop_table("segment_definitions")
    op.drop_table("member_consent")
