"""Reference models (a registry), pretrained models that ship in packages, weights on disk."""

from prunelab.sources.models.cache import (
    default_cache_dir,
    load_weights,
    save_weights,
)
from prunelab.sources.models.zoo import MODELS, PRETRAINED, build_model

__all__ = [
    "MODELS",
    "PRETRAINED",
    "default_cache_dir",
    "build_model",
    "load_weights",
    "save_weights",
]
from prunelab.sources.models import detector as _detector  # noqa: F401  (registers detector-tiny)
from prunelab.sources.models import pretrained as _pretrained  # noqa: F401  (minilm, smollm2-135m)
from prunelab.sources.models import resnet as _resnet  # noqa: F401  (registers resnet-tiny)
from prunelab.sources.models import text as _text  # noqa: F401  (registers the text classifiers)
