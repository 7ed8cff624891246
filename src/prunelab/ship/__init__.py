"""prunelab.ship."""
