"""When each processed event id was recorded, for pruning past the retention window.

SqlProfileStore.prune_processed forgets the ids recorded before a cutoff. Ids recorded
before this revision count as recorded at the upgrade: they are kept a whole window from
then, long enough for any redelivery of theirs.

Revision ID: 0002_processed_at
Revises: 0001_baseline
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002_processed_at"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "processed_events", sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True)
    )
    processed = sa.table("processed_events", sa.column("processed_at", sa.DateTime(timezone=True)))
    op.execute(processed.update().values(processed_at=datetime.now(UTC)))
    # SQLite sets NOT NULL only on a copy of the table (batch mode); PostgreSQL alters it.
    with op.batch_alter_table("processed_events") as batch:
        batch.alter_column("processed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])


def downgrade() -> None:
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
    with op.batch_alter_table("processed_events") as batch:
        batch.drop_column("processed_at")
