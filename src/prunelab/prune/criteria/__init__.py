"""Pruning criteria: pure functions ``(weight, ctx) -> scores``, higher means keep.

Each module registers its criteria where they are defined; importing this package loads them.
"""

from prunelab.prune.criteria import gradient as _gradient  # noqa: F401  (taylor)
from prunelab.prune.criteria import magnitude as _magnitude  # noqa: F401  (magnitude, random)
from prunelab.prune.criteria import wanda as _wanda  # noqa: F401  (wanda)
from prunelab.prune.criteria.base import CRITERIA, Criterion, compute_scores

__all__ = ["CRITERIA", "Criterion", "compute_scores"]
