"""prunelab.prune.allocation."""
