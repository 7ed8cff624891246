"""Your data: a function returning (train, val, test) as torch Datasets (here sklearn digits)."""

import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def load():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (
        TensorDataset(x[:1200], y[:1200]),
        TensorDataset(x[1200:1500], y[1200:1500]),
        TensorDataset(x[1500:], y[1500:]),
    )
