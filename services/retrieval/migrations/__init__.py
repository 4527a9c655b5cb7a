"""The retrieval store's schema revisions: interactions, the catalog copy (docs/migrations.md)."""
