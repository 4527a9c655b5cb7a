"""Baseline: the analytics schema of the release before migrations: none.

Analytics did not exist then; every service's revisions start from a baseline all the same,
so that the rules for upgrading a data dir are the same for every service.

Revision ID: 0001_baseline
Revises:
"""

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
