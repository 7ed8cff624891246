"""The dataset registry: a name -> a loader of a :class:`~prunelab.data.DataBundle`."""

from __future__ import annotations

import os
from collections.abc import Callable

from prunelab.data import DataBundle
from prunelab.registry import Registry, check_options

PathLike = str | os.PathLike[str]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
Loader = Callable[..., DataBundle]
DATASETS: Registry[Loader] = Registry("dataset")


def load_dataset(name: str, **kwargs: object) -> DataBundle:
    """Load a registered dataset by name.

    >>> load_dataset("digits").num_classes
    10
    >>> load_dataset("digits", colour=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: dataset 'digits' has no option 'colour'; valid: seed, ...
    """
    loader = DATASETS.get(name)
    check_options(f"dataset '{name}'", loader, kwargs)
    return loader(**kwargs)
