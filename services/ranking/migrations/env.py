"""Alembic's entry point for the ranking revisions (services.common.migrations runs it)."""

from services.common.migrations import run_env
from services.ranking.store import metadata

run_env(metadata)
