"""Wanda and N:M against literal hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunelab import NM, PrunelabError, compute_scores, select_masks, select_targets
from prunelab.prune.calibration import collect
from prunelab.prune.masks import nm_masks

W = [[1.0, -2.0, 0.5, 3.0], [-0.25, 1.0, -4.0, 0.0], [2.0, 0.5, 1.0, -1.0]]
BATCH_1 = [[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 1.0, 0.0]]
BATCH_2 = [[0.0, 0.0, 0.0, 2.0]]
# ‖X_j‖₂ over all three rows, by hand: sqrt(1+9), sqrt(4), sqrt(1), sqrt(4)
NORMS = [math.sqrt(10.0), 2.0, 1.0, 2.0]


def _linear() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W))
        model[0].bias.zero_()
    return model


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (torch.tensor(BATCH_1), torch.tensor([0, 1])),
        (torch.tensor(BATCH_2), torch.tensor([2])),
    ]


def test_collect_input_norm_matches_hand_computation():
    model = _linear()
    stats = collect(model, select_targets(model), _batches(), frozenset({"input_norm"}))
    torch.testing.assert_close(stats["0"]["input_norm"], torch.tensor(NORMS))


def test_wanda_linear_matches_literal_reference():
    model = _linear()
    scores = compute_scores(model, select_targets(model), "wanda", calibration=_batches())["0"]
    expected = [[abs(W[i][j]) * NORMS[j] for j in range(4)] for i in range(3)]
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64))


def test_wanda_conv_uses_channel_norm_over_batch_and_pixels():
    model = nn.Sequential(nn.Conv2d(2, 1, kernel_size=1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[2.0]], [[-3.0]]]]))  # (1, 2, 1, 1)
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
    batches = [(x, torch.tensor([0]))]
    scores = compute_scores(model, select_targets(model), "wanda", calibration=batches)["0"]
    # channel 0: sqrt(1 + 4); channel 1: sqrt(0 + 1)
    expected = torch.tensor([[[[2.0 * math.sqrt(5.0)]], [[3.0 * 1.0]]]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_exact_pattern_in_every_group(n, m):
    g = torch.Generator().manual_seed(0)
    scores = {"lin": torch.rand(6, 16, generator=g), "conv": torch.rand(4, 8, 2, 2, generator=g)}
    masks = nm_masks(scores, NM(n, m))
    for name, s in scores.items():
        keep = masks[name].reshape(s.shape[0], -1, m)  # (out, in/m, m)
        vals = s.reshape(s.shape[0], -1, m)  # (out, in/m, m)
        assert (keep.sum(-1) == n).all(), name
        kept_min = torch.where(keep, vals, torch.inf).amin(-1)
        dropped_max = torch.where(keep, -torch.inf, vals).amax(-1)
        assert (kept_min > dropped_max).all(), f"{name}: a dropped weight outscored a kept one"


def test_nm_literal_example():
    scores = {"a": torch.tensor([[0.1, 0.9, 0.5, 0.3, 4.0, 3.0, 2.0, 1.0]])}
    assert nm_masks(scores, NM(2, 4))["a"].tolist() == [
        [False, True, True, False, True, True, False, False]
    ]
    assert nm_masks(scores, NM(1, 4))["a"].tolist() == [
        [False, True, False, False, True, False, False, False]
    ]


def test_nm_m_not_dividing_input_dim_fails():
    with pytest.raises(
        PrunelabError, match=r"M=4 to divide the input dimension of layer 'a' \(10\)"
    ):
        nm_masks({"a": torch.rand(3, 10)}, NM(2, 4))
    with pytest.raises(PrunelabError, match="M=8.*'c' \\(36\\)"):
        nm_masks({"c": torch.rand(2, 4, 3, 3)}, NM(4, 8))  # in * kh * kw = 36


def test_nm_sparsity_mismatch_and_invalid_pattern():
    with pytest.raises(PrunelabError, match="fixes sparsity at 0.5"):
        select_masks({"a": torch.rand(2, 8)}, 0.7, structure=NM(2, 4))
    with pytest.raises(PrunelabError, match="0 < N < M"):
        NM(4, 4)
