"""The profiles store's schema revisions (Alembic; docs/migrations.md)."""
