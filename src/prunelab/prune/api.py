"""The one-call entry points: :func:`prune` and (re-exported) :func:`evaluate`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from prunelab.prune.allocation import Allocation
from prunelab.prune.apply import apply_masks
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import Masks, check_sparsity
from prunelab.prune.structures import Channels, Structure, Unstructured, select_masks
from prunelab.prune.targets import select_targets


def prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.5,
    allocation: str | Allocation = "global",
    structure: Structure = Unstructured(),
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    prune_last: bool = True,
    generator: torch.Generator | None = None,
) -> Masks:
    """Prune ``model`` in place to ``sparsity`` and return the masks applied.

    ``allocation`` names a per-layer allocation ("global", "uniform", ...); ``method`` a criterion.

    >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> masks = prune(m, "magnitude", sparsity=0.75, allocation="global")
    >>> int((m[0].weight == 0).sum() + (m[2].weight == 0).sum()), m[0].weight.numel() + 16
    (60, 80)
    """
    check_sparsity(sparsity)
    if isinstance(structure, Channels):
        prune_last = False  # the classifier's outputs are the classes: never removed
    targets = select_targets(model, include, exclude, prune_last)
    scores = compute_scores(model, targets, method, generator, calibration)
    masks = select_masks(scores, sparsity, allocation, structure)
    apply_masks(model, masks)
    return masks
