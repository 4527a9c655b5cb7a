"""The gateway's serving latency of each impression, for experiments' latency guardrail.

Impressions kept before this revision have none (NULL): the latency percentiles of a report
are over the impressions that carry one.

Revision ID: 0004_impression_latency
Revises: 0003_campaign_exposures
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_impression_latency"
down_revision = "0003_campaign_exposures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: SQLite adds it in place, without copying the table.
    op.add_column("impressions", sa.Column("latency_ms", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("impressions") as batch:
        batch.drop_column("latency_ms")
