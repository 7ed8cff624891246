"""prunelab.recover."""
