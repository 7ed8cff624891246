"""prunelab.prune."""
