"""Ranking's first tables: the active ranker's history and the experiments.

Revision ID: 0002_rankers_experiments
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_rankers_experiments"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ranker_activations",
        sa.Column("activation_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ranker", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("activation_id"),
        if_not_exists=True,
    )
    op.create_table(
        "experiments",
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("placement", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("winner", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id"),
        if_not_exists=True,
    )
    op.create_index("ix_experiments_placement", "experiments", ["placement", "status"])


def downgrade() -> None:
    op.drop_table("experiments")
    op.drop_table("ranker_activations")
