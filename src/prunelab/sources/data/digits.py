"""scikit-learn's 8x8 handwritten digits (1,797 images): a tiny dataset for tests."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits as sk_load

from prunelab.data import DataBundle, Split, split_train_val
from prunelab.sources.data.base import DATASETS


@DATASETS.register("digits")
def load_digits(seed: int = 0, val_size: int = 200, test_size: int = 400) -> DataBundle:
    """Digits as (N, 1, 8, 8) float images scaled to [0, 1], split with ``seed``."""

    raw = sk_load()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(raw.target, dtype=torch.long)
    g = torch.Generator().manual_seed(1234)  # fixed test split, independent of ``seed``
    order = torch.randperm(len(y), generator=g)
    test_idx, rest = order[:test_size], order[test_size:]
    train, val = split_train_val(x[rest], y[rest], val_size, seed)
    return DataBundle("digits", train, val, Split(x[test_idx], y[test_idx]), num_classes=10)
