"""Per-layer allocations: one contract over ALLOCATIONS, LAMP/ERK against literal references,
bounds with redistribution, and the warning when a layer is emptied."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from prunelab import ALLOCATIONS, PrunelabError, compute_scores, select_masks, select_targets
from prunelab.prune.allocation import ModelAware, RankedScores
from prunelab.prune.allocation.layerwise import Bounds, bounded, erk_densities, lamp_scores
from prunelab.prune.structures import Channels

LADDER = (0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99)
# Overall prune count vs round(s * total): pooled orderings are exact; uniform rounds each layer.
# rounding: at most half a weight per layer (uniform) or per output row (row)
TOLERANCE = {
    "uniform": lambda scores: len(scores) / 2,
    "owl": lambda scores: len(scores) / 2,  # per-layer levels, rounded per layer
    "row": lambda scores: sum(s.shape[0] for s in scores.values()) / 2,
}


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),  # (B, 4, 6, 6) -> (B, 144)
        nn.Linear(144, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def scores() -> dict[str, torch.Tensor]:
    model = _tiny_cnn()
    return compute_scores(model, select_targets(model), "magnitude")


SCORE_ONLY = [n for n in ALLOCATIONS.names() if not isinstance(ALLOCATIONS.get(n), ModelAware)]


@pytest.mark.parametrize("name", sorted(set(ALLOCATIONS.names()) - set(SCORE_ONLY)))
def test_model_aware_allocations_refuse_scores_alone(name, scores):
    """sensitivity/searched are resolved by the sweep; called bare they say so, not guess."""
    with pytest.raises(PrunelabError, match=f"allocation '{name}' needs the dense model"):
        ALLOCATIONS.get(name)(scores, 0.5)


@pytest.mark.parametrize("name", SCORE_ONLY)
def test_allocation_contract(name, scores):
    alloc = ALLOCATIONS.get(name)
    total = sum(s.numel() for s in scores.values())
    tol = TOLERANCE.get(name, lambda scores: 0)(scores)
    previous = None
    for level in LADDER:
        counts = alloc(scores, level)
        assert set(counts) == set(scores)
        assert all(isinstance(c, int) and 0 <= c <= scores[n].numel() for n, c in counts.items())
        assert abs(sum(counts.values()) - round(level * total)) <= tol, (level, counts)
        assert counts == alloc(scores, level), "allocation must be deterministic"
        if previous is not None:
            assert all(counts[n] >= previous[n] for n in counts), "counts must grow with sparsity"
        previous = counts
    assert alloc(scores, 0.0) == dict.fromkeys(scores, 0)


def test_lamp_scores_literal():
    # |w| sorted: 0.5, 1, 2, 3 -> squares 0.25, 1, 4, 9; suffix sums 14.25, 14, 13, 9
    got = lamp_scores(torch.tensor([[-3.0, 1.0], [2.0, 0.5]]).abs())
    torch.testing.assert_close(
        got, torch.tensor([0.25 / 14.25, 1 / 14, 4 / 13, 1.0], dtype=torch.float64)
    )


def test_lamp_refuses_negative_scores():
    with pytest.raises(PrunelabError, match="non-negative"):
        lamp_scores(torch.tensor([-1.0, 2.0]))


def test_lamp_differs_from_global_as_in_the_paper():
    s = {"a": torch.tensor([0.5, 1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 20.0])}
    # pooled LAMP: a0 .018, a1 .071, b0 .2 (=100/500), a2 .31, a3 1, b1 1 -> lowest 3
    assert ALLOCATIONS.get("lamp")(s, 0.5) == {"a": 2, "b": 1}
    assert ALLOCATIONS.get("global")(s, 0.5) == {"a": 3, "b": 0}
    masks = select_masks(s, 0.5, "lamp")
    assert masks["a"].tolist() == [False, False, True, True]
    assert masks["b"].tolist() == [False, True]


def test_erk_densities_formula_uncapped(scores):
    # raw = (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w), Linear without the kernel terms
    raw = {
        "0": (1 + 4 + 3 + 3) / (1 * 4 * 3 * 3),
        "3": (144 + 16) / (144 * 16),
        "5": (16 + 10) / (16 * 10),
    }
    numel = {"0": 36, "3": 2304, "5": 160}
    eps = 0.1 * 2500 / sum(raw[n] * numel[n] for n in raw)
    expected = {n: eps * raw[n] for n in raw}
    assert erk_densities({n: tuple(s.shape) for n, s in scores.items()}, 0.9) == pytest.approx(
        expected
    )
    counts = ALLOCATIONS.get("erk")(scores, 0.9)
    for n in raw:
        assert abs((numel[n] - counts[n]) - expected[n] * numel[n]) <= 1, n


def test_erk_caps_small_layers_at_dense(scores):
    # at 50 %: eps * raw > 1 for the conv and the last Linear -> both dense, fc1 keeps the rest
    densities = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, 0.5)
    assert densities["0"] == 1.0 and densities["5"] == 1.0
    assert densities["3"] == pytest.approx((1250 - 36 - 160) / 2304)
    assert ALLOCATIONS.get("erk")(scores, 0.5) == {"0": 0, "3": 2304 - 1054, "5": 0}


@pytest.mark.parametrize("name", ["global", "uniform", "lamp", "erk"])
def test_bounds_respected_and_target_met(name, scores):
    bounds = Bounds(0.3, 0.92)
    alloc = bounded(ALLOCATIONS.get(name), bounds)
    total = sum(s.numel() for s in scores.values())
    previous = None
    for level in (0.4, 0.5, 0.8, 0.9):
        counts = alloc(scores, level)
        for n, c in counts.items():
            lo, hi = bounds.counts(scores[n].numel())
            assert lo <= c <= hi, (n, c, lo, hi)
        slack = len(scores) if name == "uniform" else 0
        assert round(level * total) <= sum(counts.values()) <= round(level * total) + slack
        if previous is not None:
            assert all(counts[n] >= previous[n] for n in counts)
        previous = counts


def test_bounds_redistribute_what_a_layer_may_not_lose(scores):
    free = ALLOCATIONS.get("global")(scores, 0.84)
    held = bounded(ALLOCATIONS.get("global"), Bounds(0.0, 0.85))(scores, 0.84)
    assert free["3"] > 0.85 * 2304  # unbounded global over-prunes the big layer ...
    assert held["3"] == int(0.85 * 2304)  # ... bounded holds it at 85 %
    assert held["0"] > free["0"] and held["5"] > free["5"]  # and takes the rest elsewhere
    assert sum(held.values()) == round(0.84 * 2500)
    with pytest.raises(PrunelabError, match="infeasible"):
        bounded(ALLOCATIONS.get("global"), Bounds(0.0, 0.5))(scores, 0.9)


def test_bounds_validation_and_infeasible_messages(scores):
    with pytest.raises(PrunelabError, match="0 <= low <= high <= 1"):
        Bounds(0.6, 0.4)
    with pytest.raises(PrunelabError, match=r"reachable overall sparsity is \[0.7"):
        bounded(ALLOCATIONS.get("global"), Bounds(0.7, 1.0))(scores, 0.5)


def test_emptying_a_layer_warns(caplog):
    s = {"small": torch.tensor([0.1, 0.2]), "big": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    with caplog.at_level(logging.WARNING, logger="prunelab.prune.masks"):
        select_masks(s, 0.2, "global")  # 1 of 6 weights
        assert not caplog.records
        select_masks(s, 0.5, "global")
    assert [r.getMessage() for r in caplog.records] == [
        "layer small is pruned completely (sparsity 1.0)"
    ]


def test_row_allocation_prunes_every_row_alike_and_nests(scores):
    previous = None
    for level in LADDER:
        masks = select_masks(scores, level, "row")
        ranked = select_masks(RankedScores(scores), level, "row")
        for name, s in scores.items():
            rows = masks[name].reshape(s.shape[0], -1)
            k = round(level * rows.shape[1])
            assert (rows.shape[1] - rows.sum(1) == k).all(), (name, level)
            kept = s.reshape(s.shape[0], -1).masked_fill(~rows, float("inf"))
            dropped = s.reshape(s.shape[0], -1).masked_fill(rows, -float("inf"))
            assert (dropped.amax(1) <= kept.amin(1)).all()  # the lowest scores of each row go
            assert torch.equal(ranked[name], masks[name])
            if previous is not None:
                assert not (masks[name] & ~previous[name]).any(), "masks must nest"
        assert sum(int((~m).sum()) for m in masks.values()) == sum(
            ALLOCATIONS.get("row")(scores, level).values()
        )
        previous = masks
    with pytest.raises(PrunelabError, match="allocation 'row' prunes inside rows"):
        select_masks(scores, 0.5, "row", Channels())
