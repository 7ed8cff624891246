"""Shared fixtures: tiny seeded data and models on the CPU, built once per session."""

from __future__ import annotations

import pytest
import torch

from prunelab import TrainConfig, build_model, load_dataset, train


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_state(digits):
    """State dict of mlp-tiny trained 15 epochs on digits (~93% test accuracy)."""
    model = build_model("mlp-tiny", digits.input_shape, digits.num_classes, seed=0)
    train(model, digits.train, TrainConfig(epochs=15, lr=3e-3), torch.Generator().manual_seed(0))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_tiny(digits, trained_state):
    """A fresh copy of the trained tiny model (tests may prune it freely)."""
    model = build_model("mlp-tiny", digits.input_shape, digits.num_classes)
    model.load_state_dict(trained_state)
    return model.eval()


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch):
    """An isolated dense-checkpoint cache (PRUNELAB_CACHE) per test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PRUNELAB_CACHE", str(path))
    return path
