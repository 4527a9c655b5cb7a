"""profiles: member portraits (RFM, recent items, category affinities) kept from the event bus."""
