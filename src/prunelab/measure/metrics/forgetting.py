"""Pruning-identified exemplars (PIEs, Hooker et al. 2019): what the pruned models forget.

An example is a PIE at a sparsity level when the modal prediction of the pruned models
(several seeds) differs from the modal prediction of the dense models. This is a cross-seed
aggregate over stored per-example predictions, not a metric of a single model.

Ties. With S seeds the most frequent label can be shared by several classes (S = 5 and
votes 2-2-1). We keep the *set* of modal labels and call an example forgotten only when the
pruned and dense modal sets are disjoint: a tie never makes an example a PIE by an arbitrary
tie-break, so the PIE count is conservative. ``modal_labels`` reports a single label per
example for display, breaking ties toward the smallest class index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError


def vote_counts(preds: Tensor, num_classes: int) -> Tensor:
    """Votes per class: ``preds`` (S, N) integer labels -> (N, K) counts.

    >>> vote_counts(torch.tensor([[0, 1], [0, 2], [1, 2]]), 3).tolist()
    [[2, 1, 0], [0, 1, 2]]
    """
    if preds.ndim != 2 or preds.shape[0] < 1:
        raise PrunelabError(f"predictions must be (seeds, examples), got {tuple(preds.shape)}")
    preds = preds.long()
    if int(preds.min()) < 0 or int(preds.max()) >= num_classes:
        raise PrunelabError(f"predictions out of range [0, {num_classes})")
    n = preds.shape[1]
    offsets = torch.arange(n, device=preds.device).unsqueeze(0) * num_classes  # (1, N)
    flat = (preds + offsets).reshape(-1)  # (S*N,) index into the (N, K) table
    return torch.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)


def modal_sets(preds: Tensor, num_classes: int) -> Tensor:
    """(N, K) bool: True for every class that received the maximum number of votes."""
    counts = vote_counts(preds, num_classes)
    return counts == counts.max(1, keepdim=True).values


def modal_labels(preds: Tensor, num_classes: int) -> Tensor:
    """The modal label of each example (N,); ties go to the smallest class index.

    >>> modal_labels(torch.tensor([[3, 1], [5, 1], [5, 2], [3, 2]]), 6).tolist()
    [3, 1]
    """
    return vote_counts(preds, num_classes).argmax(1)  # argmax returns the first maximum


@dataclass(frozen=True)
class PieResult:
    """PIEs of one level: their fraction of the split, indices, and accuracies on them."""

    fraction: float
    indices: Tensor  # (P,) int64 row indices into the evaluated split
    dense_accuracy_on_pies: float  # dense modal label vs true label, NaN when there are no PIEs
    pruned_accuracy_on_pies: float
    dense_accuracy_elsewhere: float  # on the non-PIE examples, for contrast

    @property
    def count(self) -> int:
        return int(self.indices.numel())


def pies(dense_preds: Tensor, pruned_preds: Tensor, labels: Tensor, num_classes: int) -> PieResult:
    """PIEs from per-seed predictions: ``dense_preds`` (S_d, N), ``pruned_preds`` (S_p, N).

    >>> dense = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 2, 2]])
    >>> pruned = torch.tensor([[0, 2, 1], [0, 2, 2], [1, 1, 1]])
    >>> r = pies(dense, pruned, torch.tensor([0, 1, 1]), 3)
    >>> r.indices.tolist(), r.fraction, r.dense_accuracy_on_pies
    ([1, 2], 0.6666666666666666, 0.5)
    """
    if dense_preds.ndim != 2 or pruned_preds.ndim != 2:
        raise PrunelabError("predictions must be 2-D (seeds, examples)")
    if dense_preds.shape[1] != pruned_preds.shape[1] or labels.shape != (dense_preds.shape[1],):
        raise PrunelabError(
            f"dense {tuple(dense_preds.shape)}, pruned {tuple(pruned_preds.shape)} and labels "
            f"{tuple(labels.shape)} must cover the same examples"
        )
    dense_set = modal_sets(dense_preds, num_classes)
    pruned_set = modal_sets(pruned_preds, num_classes)
    is_pie = ~(dense_set & pruned_set).any(1)  # (N,) modal sets disjoint
    dense_hit = (modal_labels(dense_preds, num_classes) == labels).double()
    pruned_hit = (modal_labels(pruned_preds, num_classes) == labels).double()

    def mean(x: Tensor) -> float:
        return float(x.mean()) if x.numel() else float("nan")

    return PieResult(
        fraction=float(is_pie.double().mean()),
        indices=torch.nonzero(is_pie).flatten(),
        dense_accuracy_on_pies=mean(dense_hit[is_pie]),
        pruned_accuracy_on_pies=mean(pruned_hit[is_pie]),
        dense_accuracy_elsewhere=mean(dense_hit[~is_pie]),
    )
