"""Sensitivity analysis and allocation on a toy model with one deliberately fragile layer,
exact per-layer plan rounding, and weight statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from scipy.linalg import hadamard
from torch import nn

from prunelab import TrainConfig, compute_scores, load_dataset, select_targets, train
from prunelab.decide.sensitivity import sensitivity_analysis
from prunelab.decide.weightstats import (
    critical_neurons,
    critical_weights,
    describe,
    histograms,
    weight_stats,
)
from prunelab.errors import PrunelabError
from prunelab.prune.allocation.plan import (
    counts_from_plan,
    fixed_per_layer,
    plan_per_level,
    plan_sparsity,
)
from prunelab.prune.allocation.sensitivity import sensitivity_allocation, sensitivity_plan
from prunelab.prune.masks import masks_from_counts
from prunelab.sources.models import build_model

LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def fragile(digits) -> nn.Module:
    """Trained mlp-tiny with a Hadamard mixing layer '3' inserted after the first hidden layer.

    The next layer absorbs H^T, so the function is unchanged, but every weight of H has the same
    magnitude and carries a unique direction: pruning it (even a little) scrambles the hidden
    code, while the trained layers have small, redundant weights.
    """
    m = build_model("mlp-tiny", digits.input_shape, 10, seed=0)
    train(m, digits.train, TrainConfig(epochs=4, lr=1e-2), torch.Generator().manual_seed(0))
    h = torch.tensor(hadamard(64), dtype=torch.float32) / 8.0  # orthogonal, entries +-1/8
    mix = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        mix.weight.copy_(h)
        m[3].weight.copy_(m[3].weight @ h.T)
    return nn.Sequential(m[0], m[1], m[2], mix, m[3], m[4], m[5]).eval()


@pytest.fixture(scope="module")
def sens(fragile, digits) -> pd.DataFrame:
    scores = compute_scores(fragile, select_targets(fragile), "magnitude")
    return sensitivity_analysis(fragile, scores, digits.val, LEVELS)


def test_sensitivity_table_is_tidy_and_real(sens, fragile, digits) -> None:
    assert list(sens.columns) == ["layer", "level", "params", "metric_name", "metric", "drop", "kl"]
    assert set(sens["layer"]) == {"1", "3", "4", "6"}
    assert len(sens) == 4 * (len(LEVELS) + 1)
    dense = sens[sens.level == 0.0]
    assert (dense["kl"] == 0).all() and (dense["drop"] == 0).all()
    # recompute one cell by hand: layer '4' at 0.9 pruned alone, others dense
    row = sens[(sens.layer == "4") & (sens.level == 0.9)].iloc[0]
    w = fragile[4].weight.detach().clone()
    keep = masks_from_counts({"4": w.abs()}, {"4": round(0.9 * w.numel())})["4"]
    with torch.no_grad():
        fragile[4].weight.mul_(keep)
        acc = float((fragile(digits.val.x).argmax(1) == digits.val.y).float().mean())
        fragile[4].weight.copy_(w)
    assert row["metric"] == pytest.approx(acc)
    assert row["drop"] == pytest.approx(dense["metric"].iloc[0] - acc)


def test_fragile_layer_is_most_sensitive_and_gets_least_sparsity(sens) -> None:
    kl = sens.pivot(index="layer", columns="level", values="kl")
    assert kl.loc["3", 0.4] > 5 * kl.drop(index="3")[0.4].max()
    for rule in ("marginal", "threshold"):
        for target in (0.3, 0.5, 0.7):
            plan = sensitivity_plan(sens, target, rule=rule)
            assert plan["3"] < target
            # '1' has exactly the size of '3' (64x64): only fragility separates them
            assert plan["3"] < plan["1"] - 0.2
            assert plan["4"] > target  # trained hidden layers absorb the budget
    # threshold ignores layer size: the fragile layer is the least pruned of all
    assert (
        min(sensitivity_plan(sens, 0.5, rule="threshold").items(), key=lambda kv: kv[1])[0] == "3"
    )


def test_sensitivity_allocation_exact_budget_and_nested(sens, fragile) -> None:
    scores = compute_scores(fragile, select_targets(fragile), "magnitude")
    total = sum(s.numel() for s in scores.values())
    alloc = sensitivity_allocation(sens)
    previous = None
    for target in (0.3, 0.5, 0.6, 0.7, 0.8):
        counts = alloc(scores, target)
        assert sum(counts.values()) == round(target * total)
        if previous is not None:  # larger targets only add pruned weights: masks nest
            assert all(counts[k] >= previous[k] for k in counts)
        previous = counts


def test_sensitivity_bad_input(sens) -> None:
    with pytest.raises(PrunelabError, match="ladder allows"):
        sensitivity_plan(sens, 0.99)
    with pytest.raises(PrunelabError, match="rule"):
        sensitivity_plan(sens, 0.5, rule="magic")
    with pytest.raises(PrunelabError, match="no sensitivity"):
        sensitivity_plan(sens, 0.5, sizes={"1": 10, "zzz": 10})


@pytest.mark.parametrize("seed", range(5))
def test_counts_from_plan_exact_budget(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = {f"l{i}": int(n) for i, n in enumerate(rng.integers(1, 500, size=6))}
    plan = {k: float(v) for k, v in zip(sizes, rng.uniform(0, 1, size=6))}
    counts = counts_from_plan(plan, sizes)
    total = sum(sizes.values())
    assert sum(counts.values()) == round(plan_sparsity(plan, sizes) * total)
    assert all(0 <= counts[k] <= sizes[k] for k in sizes)
    assert all(abs(counts[k] - plan[k] * sizes[k]) < 1 for k in sizes)


def test_fixed_per_layer_checks_level() -> None:
    scores = {"a": torch.zeros(10), "b": torch.zeros(10)}
    assert fixed_per_layer({"a": 0.9, "b": 0.5})(scores, 0.7) == {"a": 9, "b": 5}
    with pytest.raises(PrunelabError, match="requested"):
        fixed_per_layer({"a": 0.9, "b": 0.5})(scores, 0.9)
    with pytest.raises(PrunelabError, match="no per-layer plan"):
        plan_per_level({0.5: {"a": 0.5, "b": 0.5}})(scores, 0.9)
    with pytest.raises(PrunelabError, match="no entry"):
        counts_from_plan({"a": 0.5}, {"a": 10, "b": 10})


def test_describe_matches_scipy_and_numpy() -> None:
    x = torch.tensor([-2.0, -0.05, 0.0, 0.3, 1.0, 4.0, 0.01, -1.5])
    d = describe(x)
    assert d["kurtosis"] == pytest.approx(scipy.stats.kurtosis(x.numpy(), fisher=True, bias=True))
    assert d["std"] == pytest.approx(float(np.std(x.numpy(), ddof=1)), rel=1e-6)
    assert d["q50"] == pytest.approx(float(np.quantile(x.numpy(), 0.5)))
    std = float(np.std(x.numpy(), ddof=1))
    assert d["frac_near_zero"] == pytest.approx(float(np.mean(np.abs(x.numpy()) < 0.1 * std)))
    assert d["frac_zero"] == pytest.approx(1 / 8)


def test_weight_stats_histograms(fragile) -> None:
    scores = compute_scores(fragile, select_targets(fragile), "magnitude")
    st = weight_stats(fragile, scores)
    assert len(st) == 8 and set(st["kind"]) == {"weight", "score"}
    had = st[(st.layer == "3") & (st.kind == "weight")].iloc[0]
    assert had["kurtosis"] == pytest.approx(-2.0, abs=0.01)  # two values +-1/8: minimal
    hist = histograms(fragile, bins=10)
    assert (
        hist.groupby("layer")["count"].sum() == st[st.kind == "weight"].set_index("layer")["n"]
    ).all()


def _loss(model: nn.Module, data) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data.x).double(), data.y))


def test_critical_neurons_and_weights_are_measured(fragile, digits) -> None:
    top = critical_neurons(fragile, digits.val, top=5)
    assert list(top["loss_increase"]) == sorted(top["loss_increase"], reverse=True)
    layer, i = top.loc[0, "layer"], int(top.loc[0, "neuron"])
    module = dict(fragile.named_modules())[layer]
    w = module.weight.detach().clone()
    b = None if module.bias is None else module.bias.detach().clone()
    base = _loss(fragile, digits.val)
    with torch.no_grad():
        module.weight[i] = 0
        if b is not None:
            module.bias[i] = 0
    cost = _loss(fragile, digits.val) - base
    with torch.no_grad():
        module.weight.copy_(w)
        if b is not None:
            module.bias.copy_(b)
    assert top.loc[0, "loss_increase"] == pytest.approx(cost, rel=1e-6)
    cw = critical_weights(fragile, digits.val, top=5, candidates=30)
    assert len(cw) == 5 and cw["loss_increase"].iloc[0] > 0
    assert cw["loss_increase"].is_monotonic_decreasing
