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
    if not name.startswith("latency_"):
        assert dense == again, "metrics must be deterministic"

    pruned = copy.deepcopy(trained_tiny)
    prune(pruned, "magnitude", 0.9)
    value = evaluate(pruned, digits.val, reference=trained_tiny, metrics=[name], splits=splits)
    twice = evaluate(pruned, digits.val, reference=trained_tiny, metrics=[name], splits=splits)
    assert isinstance(value[name], float) and math.isfinite(value[name])
    if not name.startswith("latency_"):  # measured times vary; the rest are exact
        assert value == twice, "metrics must be deterministic on a pruned model too"
    # the values themselves are checked by hand below and in each metric's own tests


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


def test_pruned_metrics_equal_hand_computed_values():
    """A 2x2 linear model with one weight masked, four examples: every number by hand."""
    import torch
    from torch import nn

    from prunelab.data import Split
    from prunelab.prune.apply import apply_masks

    dense = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    dense[1].weight.data = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, {"1": torch.tensor([[True, False], [True, True]])})  # w[0, 1] = 0
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 0.75]])
    split = Split(x, torch.tensor([0, 1, 0, 1]))
    # dense logits:  [1, 0] [1, 2] [4, 2] [1.75, 1.5] -> preds 0 1 0 0 (3 of 4 right)
    # pruned logits: [1, 0] [0, 2] [3, 2] [1, 1.5]    -> preds 0 1 0 1 (all right)
    pruned_logits = [[1, 0], [0, 2], [3, 2], [1, 1.5]]
    dense_logits = [[1, 0], [1, 2], [4, 2], [1.75, 1.5]]

    def log_softmax(z):
        top = math.log(sum(math.exp(v) for v in z))
        return [v - top for v in z]

    kl = (
        sum(
            sum(math.exp(p) * (p - q) for p, q in zip(log_softmax(d), log_softmax(c)))
            for d, c in zip(dense_logits, pruned_logits)
        )
        / 4
    )
    loss = -sum(log_softmax(c)[y] for c, y in zip(pruned_logits, [0, 1, 0, 1])) / 4
    names = ["accuracy", "agreement", "kl", "loss", "sparsity", "nonzeros", "params"]
    out = evaluate(pruned, split, reference=dense, metrics=names + ["sparse_macs", "macs"])
    assert evaluate(dense, split, metrics=["accuracy"]) == {"accuracy": 0.75}
    assert out["accuracy"] == 1.0 and out["agreement"] == 0.75
    assert out["kl"] == pytest.approx(kl, rel=1e-12) and out["loss"] == pytest.approx(loss)
    # w[1, 0] was zero already: exact zeros count, whoever made them
    assert (out["sparsity"], out["nonzeros"], out["params"]) == (0.5, 2.0, 4.0)
    assert (out["sparse_macs"], out["macs"]) == (2.0, 4.0)
