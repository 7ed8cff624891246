"""Masks are plain data: ``{layer: BoolTensor}``, True = keep. Computing them changes no model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import ALLOCATIONS, Allocation, ranked

if TYPE_CHECKING:
    from prunelab.prune.structures import NM

log = logging.getLogger(__name__)
Masks = dict[str, Tensor]


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise PrunelabError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def masks_from_counts(
    scores: dict[str, Tensor], counts: dict[str, int], quiet: bool = False
) -> Masks:
    """Drop the ``counts[layer]`` lowest-scoring weights of each layer (stable: ties by index).

    >>> masks_from_counts({"a": torch.tensor([[3., 1.], [2., 4.]])}, {"a": 2})["a"]
    tensor([[ True, False],
            [False,  True]])
    """
    masks, scores = {}, ranked(scores)
    for name, s in scores.items():
        flat = s.flatten()
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[scores.order(name)[: counts[name]]] = False
        masks[name] = keep.view(s.shape)
        if counts[name] >= flat.numel() and not quiet:
            log.warning("layer %s is pruned completely (sparsity 1.0)", name)
    return masks


def row_masks(scores: dict[str, Tensor], sparsity: float) -> Masks:
    """Drop the ``round(sparsity * row_length)`` lowest scores of every output row.

    >>> row_masks({"a": torch.tensor([[4., 1., 3., 2.], [1., 2., 3., 4.]])}, 0.5)["a"].tolist()
    [[True, False, True, False], [False, False, True, True]]
    """
    masks, scores = {}, ranked(scores)
    for name, s in scores.items():
        rows = s.reshape(s.shape[0], -1)  # (out, in * k...)
        k = round(sparsity * rows.shape[1])
        keep = torch.ones_like(rows, dtype=torch.bool)
        keep.scatter_(1, scores.row_order(name)[:, :k], False)
        masks[name] = keep.view(s.shape)
    return masks


def nm_masks(scores: dict[str, Tensor], nm: NM) -> Masks:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input weights.

    Groups run along the flattened input dimension (in_features, or in_channels*kh*kw).

    >>> from prunelab.prune.structures import NM
    >>> nm_masks({"a": torch.tensor([[4., 1., 3., 2.]])}, NM(2, 4))["a"].tolist()
    [[True, False, True, False]]
    """
    masks = {}
    for name, s in scores.items():
        rows = s.reshape(s.shape[0], -1)  # (out, in * k...)
        if rows.shape[1] % nm.m:
            raise PrunelabError(
                f"N:M {nm} needs M={nm.m} to divide the input dimension of layer '{name}' "
                f"({rows.shape[1]})"
            )
        groups = rows.reshape(rows.shape[0], -1, nm.m)  # (out, in/m, m)
        top = torch.topk(groups, nm.n, dim=2, sorted=False).indices  # (out, in/m, n)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
        masks[name] = keep.reshape(s.shape)
    return masks


def channel_masks(
    scores: dict[str, Tensor], sparsity: float, allocation: str | Allocation, quiet: bool = False
) -> Masks:
    """Remove whole output channels (rows), ranked by the sum of their weights' scores
    (``quiet``: no warning for a layer losing every row, as when probing levels)."""
    alloc = resolve(allocation)
    if getattr(alloc, "per_row", False):
        raise PrunelabError("allocation 'row' prunes inside rows; use it with unstructured")
    rows = {n: s.reshape(s.shape[0], -1).sum(1) for n, s in scores.items()}  # (out,)
    counts = alloc(rows, sparsity)
    keep_rows = masks_from_counts(rows, counts, quiet)
    shape = {n: (-1,) + (1,) * (s.dim() - 1) for n, s in scores.items()}
    return {n: keep_rows[n].view(shape[n]).expand_as(s).clone() for n, s in scores.items()}


def resolve(allocation: str | Allocation) -> Allocation:
    return allocation if callable(allocation) else ALLOCATIONS.get(allocation)


def mask_sparsity(masks: Masks) -> float:
    """Fraction of zeros over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1 - kept / total
