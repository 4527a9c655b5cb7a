"""Alembic's entry point for the gateway revisions (services.common.migrations runs it)."""

from services.common.migrations import run_env
from services.gateway.access_keys import metadata

run_env(metadata)
