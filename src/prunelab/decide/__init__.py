"""prunelab.decide."""
