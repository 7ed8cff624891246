"""Reference models and dense training with a safetensors cache."""

from prunelab.sources.models.cache import (
    default_cache_dir,
    load_or_train,
    load_weights,
    save_weights,
)
from prunelab.sources.models.zoo import MODELS, build_model

__all__ = [
    "MODELS",
    "default_cache_dir",
    "build_model",
    "load_or_train",
    "load_weights",
    "save_weights",
]
from prunelab.sources.models import detector as _detector  # noqa: F401  (registers detector-tiny)
from prunelab.sources.models import resnet as _resnet  # noqa: F401  (registers resnet-tiny)
from prunelab.sources.models import text as _text  # noqa: F401  (registers the text classifiers)
