"""prunelab.sources."""
