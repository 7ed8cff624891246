"""The dataset registry: a name -> a loader of a :class:`~prunelab.data.DataBundle`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from prunelab.data import DataBundle
from prunelab.errors import PrunelabError
from prunelab.registry import Registry

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
    params = inspect.signature(loader).parameters
    for key in kwargs:
        if key not in params:
            raise PrunelabError(
                f"dataset '{name}' has no option '{key}'; valid: {', '.join(params)}"
            )
    return loader(**kwargs)
