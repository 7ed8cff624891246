"""prunelab.measure."""
