"""Allocation: how much of each layer to prune, one protocol and one registry.

An allocation maps ``(scores, sparsity) -> {layer: prune count}``. The registry
:data:`ALLOCATIONS` holds every one: ``uniform``, ``global``, ``row`` (base), ``lamp``, ``erk``
(layerwise), ``owl`` (outlier-weighted, :mod:`.owl`), and the model-aware ``sensitivity`` and
``searched`` (resolved per cell from the dense model by the sweep). :class:`Bounds` wraps any
of them.
"""

from prunelab.prune.allocation.base import (
    ALLOCATIONS,
    Allocation,
    ModelAware,
    RankedScores,
    global_counts,
    ranked,
    row_counts,
    uniform,
)
from prunelab.prune.allocation.layerwise import Bounds, bounded, erk, lamp
from prunelab.prune.allocation.owl import owl, owl_sparsities
from prunelab.prune.allocation.plan import counts_from_plan, fixed_per_layer
from prunelab.prune.allocation.sensitivity import sensitivity_allocation, sensitivity_plan

__all__ = [
    "ALLOCATIONS",
    "Allocation",
    "Bounds",
    "ModelAware",
    "RankedScores",
    "bounded",
    "counts_from_plan",
    "erk",
    "fixed_per_layer",
    "global_counts",
    "lamp",
    "owl",
    "owl_sparsities",
    "ranked",
    "row_counts",
    "sensitivity_allocation",
    "sensitivity_plan",
    "uniform",
]
