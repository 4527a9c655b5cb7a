"""analytics: impressions, attribution, experiment and campaign reports."""
