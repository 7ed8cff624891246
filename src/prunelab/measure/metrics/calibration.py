"""Calibration: expected calibration error, negative log-likelihood, Brier score.

A pruned model can keep its accuracy while its confidences drift away from its hit rate;
these metrics see that. Definitions are in ``docs/metrics.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import Evaluation, metric

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


def _check_probs(probs: Tensor, labels: Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise PrunelabError(
            f"expected probs (N, K) and labels (N,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise PrunelabError("calibration needs at least one example")


def reliability_bins(
    probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, mean confidence, accuracy) over ``n_bins`` equal-width bins of [0, 1].

    Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 goes to bin 0.
    Empty bins report 0 confidence and 0 accuracy (their weight in the ECE is 0).

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    >>> c, conf, acc = reliability_bins(p, torch.tensor([0, 1]), n_bins=2)
    >>> c.tolist(), conf.tolist(), acc.tolist()
    ([0.0, 2.0], [0.0, 0.75], [0.0, 0.5])
    """
    _check_probs(probs, labels)
    if n_bins < 1:
        raise PrunelabError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.double().max(1)
    hit = (pred == labels).double()
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)  # (N,) bin of each example
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = torch.bincount(idx, weights=hit, minlength=n_bins)
    safe = count.clamp(min=1)
    return count, conf_sum / safe, hit_sum / safe


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width bins.

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    >>> round(expected_calibration_error(p, torch.tensor([0, 1]), n_bins=2), 4)
    0.25
    """
    count, conf, acc = reliability_bins(probs, labels, n_bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean over examples of sum_k (p_k - 1[y = k])^2, in [0, 2].

    >>> brier_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 0]))
    0.25
    """
    _check_probs(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).double()  # (N, K)
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


@metric("ece", higher_is_better=False, fraction=True)
def ece(ev: Evaluation) -> float:
    """Expected calibration error of the top-1 confidence, 15 equal-width bins."""
    return expected_calibration_error(F.softmax(ev.logits.double(), 1), ev.labels)


@metric("delta_ece", higher_is_better=False, needs_reference=True, fraction=True)
def delta_ece(ev: Evaluation) -> float:
    """ECE of the model minus ECE of the dense reference (positive = worse calibrated)."""
    ref = F.softmax(ev.need_reference("delta_ece").double(), 1)
    return ece(ev) - expected_calibration_error(ref, ev.labels)


@metric("nll", higher_is_better=False)
def nll(ev: Evaluation) -> float:
    """Negative log-likelihood of the true label (nats, mean); equals ``loss``."""
    return float(F.cross_entropy(ev.logits.double(), ev.labels))


@metric("brier", higher_is_better=False)
def brier(ev: Evaluation) -> float:
    """Multi-class Brier score of the softmax probabilities (0 = perfect, 2 = worst)."""
    return brier_score(F.softmax(ev.logits.double(), 1), ev.labels)
