"""Tiny seeded CPU fixtures shared by the test suite (session-scoped: built once, seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab import DataBundle, TrainConfig, build_model, load_dataset, train


def pytest_configure(config: pytest.Config) -> None:
    """Tiny models run fastest single-threaded, and the CPU is shared with other jobs."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    """sklearn's 8x8 digits: 1,197 train / 200 val / 400 test images."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def _trained_tiny(digits: DataBundle) -> nn.Module:
    model = build_model("mlp-tiny", digits.input_shape, digits.num_classes, seed=0)
    train(
        model,
        digits.train,
        TrainConfig(epochs=15, lr=3e-3, batch_size=64),
        torch.Generator().manual_seed(0),
    )
    return model


@pytest.fixture()
def trained_tiny(_trained_tiny: nn.Module) -> nn.Module:
    """A fresh copy of the trained mlp-tiny (≈95 % val accuracy); tests may prune it freely."""
    return copy.deepcopy(_trained_tiny)


@pytest.fixture(scope="session")
def calib(digits: DataBundle) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two fixed calibration batches of 64 training images."""
    return [(digits.train.x[i : i + 64], digits.train.y[i : i + 64]) for i in (0, 64)]


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """An isolated dense-checkpoint cache (``PRUNELAB_CACHE``) per test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PRUNELAB_CACHE", str(path))
    return path
