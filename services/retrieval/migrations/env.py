"""Alembic's entry point for the retrieval revisions (services.common.migrations runs it)."""

from services.common.migrations import run_env
from services.retrieval.store import metadata

run_env(metadata)
