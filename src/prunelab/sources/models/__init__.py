"""Reference models and dense training with a safetensors cache."""
