"""Tombstones and audit entries of erasures, and identity links (services/common/members.py):
what retrieval keeps of the members topic (docs/erasure.md, docs/identity.md).

Revision ID: 0002_member_commands
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_member_commands"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_links",
        sa.Column("anonymous_id", sa.String(128), nullable=False),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("anonymous_id"),
    )
    op.create_index("ix_identity_links_member", "identity_links", ["member_id"])
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


def downgrade() -> None:
    op.drop_index("ix_member_erasures_digest", table_name="member_erasures")
    op.drop_table("member_erasures")
    op.drop_index("ix_identity_links_member", table_name="identity_links")
    op.drop_table("identity_links")
