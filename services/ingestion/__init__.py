"""ingestion: validates what shops send and publishes it on the event bus."""
