"""The campaigns store's schema revisions: the catalog copy (Alembic; docs/migrations.md)."""
