"""Alembic's entry point for the profiles revisions (services.common.migrations runs it)."""

from services.common.migrations import run_env
from services.profiles.store import metadata

run_env(metadata)
