"""Every registered metric passes one contract on dense and pruned tiny models."""

from __future__ import annotations

import copy
import math

import pytest

from prunelab import METRICS, evaluate, prune


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_contract(name, trained_tiny, digits):
    splits = {"train": digits.train, "val": digits.val}  # for train/val-gap metrics
    dense = evaluate(
        trained_tiny, digits.val, reference=trained_tiny, metrics=[name], splits=splits
    )
    again = evaluate(
        trained_tiny, digits.val, reference=trained_tiny, metrics=[name], splits=splits
    )
    assert list(dense) == [name]
    assert isinstance(dense[name], float) and math.isfinite(dense[name])
    assert dense == again, "metrics must be deterministic"

    pruned = copy.deepcopy(trained_tiny)
    prune(pruned, "magnitude", 0.9)
    value = evaluate(pruned, digits.val, reference=trained_tiny, metrics=[name], splits=splits)[
        name
    ]
    assert isinstance(value, float) and math.isfinite(value)


def test_dense_against_itself_is_perfect_fidelity(trained_tiny, digits):
    out = evaluate(
        trained_tiny, digits.val, reference=trained_tiny, metrics=["agreement", "kl", "sparsity"]
    )
    assert out == {"agreement": 1.0, "kl": 0.0, "sparsity": 0.0}


def test_pruning_moves_fidelity_metrics(trained_tiny, digits):
    pruned = copy.deepcopy(trained_tiny)
    prune(pruned, "magnitude", 0.9)
    out = evaluate(pruned, digits.val, reference=trained_tiny, metrics=["agreement", "kl"])
    assert out["agreement"] < 1.0 and out["kl"] > 0.0
