"""The gateway store's schema revisions: access keys (Alembic; docs/migrations.md)."""
