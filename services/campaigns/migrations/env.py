"""Alembic's entry point for the campaigns revisions (services.common.migrations runs it)."""

# Every table of the service: campaign_store's metadata is store's, with its own added.
from services.campaigns.campaign_store import metadata
from services.common.migrations import run_env

run_env(metadata)
