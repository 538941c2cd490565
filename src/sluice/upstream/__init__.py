"""Upstream: engine client, discovery, metrics scraper, KV-event subscriber."""
