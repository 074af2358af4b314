"""Retrieval quality on real rooms: `roomlens eval` (metrics, runner, reports)."""
