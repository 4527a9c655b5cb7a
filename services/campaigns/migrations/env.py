"""Alembic's entry point for the campaigns revisions (services.common.migrations runs it)."""

from services.campaigns.store import metadata
from services.common.migrations import run_env

run_env(metadata)
