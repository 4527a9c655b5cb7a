"""Alembic's entry point for the analytics revisions (services.common.migrations runs it)."""

from services.analytics.store import metadata
from services.common.migrations import run_env

run_env(metadata)
