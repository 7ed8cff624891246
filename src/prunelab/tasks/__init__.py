"""Task kinds: what a model is for (loss, predictions, metrics with direction)."""
