"""Reference models and dense training with a safetensors cache."""

from prunelab.models.zoo import MODELS, build_model
from prunelab.models.cache import load_or_train, load_weights, save_weights

__all__ = ["MODELS", "build_model", "load_or_train", "load_weights", "save_weights"]
