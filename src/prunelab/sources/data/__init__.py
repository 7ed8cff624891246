"""Offline datasets as in-memory tensors: a :class:`DataBundle` of train/val/test splits."""

from prunelab.sources.data import corpora as _corpora  # noqa: F401  (hamlet, text-file)
from prunelab.sources.data import digits as _digits  # noqa: F401  (registers "digits")
from prunelab.sources.data import fashion_mnist as _fashion_mnist  # noqa: F401  (registers "fashion-mnist")
from prunelab.sources.data import scenes as _scenes  # noqa: F401  (digit-scenes, fashion-scenes)
from prunelab.sources.data import text as _text  # noqa: F401  (registers "rotten-tomatoes")
from prunelab.sources.data.base import DATASETS, load_dataset

__all__ = ["DATASETS", "load_dataset"]
