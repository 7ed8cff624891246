"""Prune, fine-tune and measure: nesting, exact sparsity, exact zeros, controls, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunelab import (
    ALLOCATIONS,
    PrunelabError,
    TrainConfig,
    apply_masks,
    compute_scores,
    evaluate,
    get_masks,
    layer_sparsity,
    make_permanent,
    prune,
    select_masks,
    select_targets,
    train,
)
from prunelab.prune.allocation import ModelAware
from prunelab.prune.masks import mask_sparsity

LADDER = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@pytest.fixture()
def magnitude_scores(trained_tiny):
    return compute_scores(trained_tiny, select_targets(trained_tiny), "magnitude")


@pytest.mark.parametrize(
    "allocation", [n for n in ALLOCATIONS.names() if not isinstance(ALLOCATIONS.get(n), ModelAware)]
)
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "ties"])
def test_masks_nest_across_ladder(allocation, tied, magnitude_scores):
    scores = magnitude_scores
    if tied:  # coarse scores: many exact ties, broken by position
        scores = {n: (s * 4).round() for n, s in scores.items()}
    previous = None
    for level in LADDER:
        masks = select_masks(scores, level, allocation)
        if previous is not None:
            for name, keep in masks.items():
                assert not (keep & ~previous[name]).any(), f"{name} regrew weights at {level}"
        previous = masks


def test_uniform_sparsity_exact_per_layer(magnitude_scores):
    for level in LADDER:
        masks = select_masks(magnitude_scores, level, "uniform")
        for name, keep in masks.items():
            assert abs(int((~keep).sum()) - level * keep.numel()) <= 1, (name, level)


def test_global_sparsity_exact_overall(magnitude_scores):
    total = sum(s.numel() for s in magnitude_scores.values())
    for level in LADDER:
        masks = select_masks(magnitude_scores, level, "global")
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert abs(pruned - level * total) <= 1, level


def test_achieved_sparsity_on_the_model(trained_tiny, digits):
    masks = prune(trained_tiny, "magnitude", 0.8, allocation="uniform")
    achieved = layer_sparsity(trained_tiny, select_targets(trained_tiny))
    for name, keep in masks.items():
        assert achieved[name] == pytest.approx(round(0.8 * keep.numel()) / keep.numel())
    assert evaluate(trained_tiny, digits.val, metrics=["sparsity"])["sparsity"] == pytest.approx(
        mask_sparsity(masks)
    )


def test_pruned_weights_stay_zero_through_finetune_and_permanent(trained_tiny, digits):
    masks = prune(trained_tiny, "magnitude", 0.8)
    before = {n: m.weight.detach().clone() for n, m in select_targets(trained_tiny).items()}
    train(
        trained_tiny,
        digits.train,
        TrainConfig(epochs=1, lr=1e-2, batch_size=64),
        torch.Generator().manual_seed(0),
    )
    modules = dict(trained_tiny.named_modules())
    for name, keep in masks.items():
        w = modules[name].weight.detach()
        assert (w[~keep] == 0).all(), f"{name}: pruned weights moved during fine-tuning"
        assert not torch.equal(w[keep], before[name][keep]), "fine-tuning did not train"
    assert set(get_masks(trained_tiny)) == set(masks)

    make_permanent(trained_tiny)
    assert get_masks(trained_tiny) == {}
    for name, keep in masks.items():
        param = modules[name].weight
        assert isinstance(param, nn.Parameter) and (param.detach()[~keep] == 0).all()


def test_magnitude_beats_random_at_90(trained_tiny, digits):
    acc = {}
    for method in ("magnitude", "random"):
        model = copy.deepcopy(trained_tiny)
        prune(model, method, 0.9, generator=torch.Generator().manual_seed(0))
        acc[method] = evaluate(model, digits.val, metrics=["accuracy"])["accuracy"]
    assert acc["magnitude"] > acc["random"] + 0.2, acc


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, "0.5"])
def test_sparsity_out_of_range(bad, trained_tiny):
    with pytest.raises(PrunelabError, match=r"sparsity must be in \[0, 1\)"):
        prune(trained_tiny, "magnitude", bad)


def test_unknown_method_lists_valid_ones(trained_tiny):
    with pytest.raises(PrunelabError) as err:
        prune(trained_tiny, "magnitud", 0.5)
    msg = str(err.value)
    assert "unknown method 'magnitud'" in msg and "did you mean 'magnitude'" in msg
    assert all(name in msg for name in ("magnitude", "random", "taylor", "wanda"))


def test_unknown_allocation_lists_valid_ones(trained_tiny):
    with pytest.raises(PrunelabError, match="unknown allocation 'lamb'.*valid: .*lamp"):
        prune(trained_tiny, "magnitude", 0.5, allocation="lamb")


def test_model_without_prunable_parameters():
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.LayerNorm(4))
    with pytest.raises(PrunelabError, match="no prunable parameters"):
        prune(model, "magnitude", 0.5)


def test_nan_weights_are_refused(trained_tiny):
    with torch.no_grad():
        trained_tiny[3].weight[0, 0] = math.nan
    with pytest.raises(PrunelabError, match="layer '3' has NaN or Inf weights"):
        prune(trained_tiny, "magnitude", 0.5)


def test_masks_refuse_wrong_layer_or_shape(trained_tiny):
    with pytest.raises(PrunelabError, match="unknown layer 'nope'"):
        apply_masks(trained_tiny, {"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="does not fit layer '1'"):
        apply_masks(trained_tiny, {"1": torch.ones(3, 3, dtype=torch.bool)})
