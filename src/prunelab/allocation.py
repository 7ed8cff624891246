"""Per-layer sparsity allocation: how many weights each layer loses for a target sparsity.

An allocation maps ``(scores, sparsity)`` to a prune count per layer. Counts grow
monotonically with sparsity, so masks thresholded from the same scores nest across a ladder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prunelab.registry import Registry

Allocation = Callable[[dict[str, Tensor], float], dict[str, int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


@ALLOCATIONS.register("uniform")
def uniform(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Every layer pruned to the same sparsity (layerwise scope).

    >>> uniform({"a": torch.zeros(10), "b": torch.zeros(4)}, 0.5)
    {'a': 5, 'b': 2}
    """
    return {n: round(sparsity * s.numel()) for n, s in scores.items()}


def global_counts(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """The lowest ``sparsity`` fraction of all scores pooled across layers.

    Ties are broken by position (stable sort), so counts are exact and nested.

    >>> global_counts({"a": torch.tensor([1., 5.]), "b": torch.tensor([2., 3., 4.])}, 0.6)
    {'a': 1, 'b': 2}
    """
    names = list(scores)
    pooled = getattr(scores, "pooled", None)  # masks.RankedScores caches the pooled order
    if pooled is not None:
        owner, order = pooled()
    else:
        flat = torch.cat([scores[n].flatten() for n in names])  # (total,)
        owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
        order = torch.argsort(flat, stable=True)
    k = round(sparsity * owner.numel())
    counts = torch.bincount(owner[order[:k]], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


ALLOCATIONS.add("global", global_counts)


@ALLOCATIONS.register("row")
def row_counts(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Every output row (neuron/filter) pruned to the same sparsity (Wanda's comparison group).

    Sun et al. 2023 compare weights per output row; :func:`prunelab.masks.select_masks`
    thresholds each row on its own, and these are the resulting per-layer counts.

    >>> row_counts({"a": torch.zeros(3, 10)}, 0.3)
    {'a': 9}
    """
    return {
        n: s.shape[0] * round(sparsity * (s.numel() // max(s.shape[0], 1)))
        for n, s in scores.items()
    }


row_counts.per_row = True  # type: ignore[attr-defined]
from prunelab import allocators as _allocators  # noqa: E402, F401  (lamp, erk; bounds)
