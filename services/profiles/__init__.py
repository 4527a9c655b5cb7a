"""profiles: member portraits (RFM figures and scores, lifecycle, affinities, price band, tags)
kept from the event bus; definitions in docs/portraits.md."""
