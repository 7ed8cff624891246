"""One-shot pruning of a model by any method and structure: the one entry the sweep calls.

A criterion's method prunes through the structure (:meth:`Structure.prune`: masks, or physical
removal); a reconstruction method (SparseGPT, :data:`~prunelab.prune.reconstruct.RECONSTRUCTORS`)
prunes weight-level structures layer after layer on calibration inputs that pass through the
already-pruned layers, updating the kept weights.
"""

from __future__ import annotations

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import ALLOCATIONS
from prunelab.prune.criteria import compute_scores
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structures import Pruning, Structure


def prune_once(model: nn.Module, structure: Structure, job: Pruning) -> None:
    """Prune ``model`` in place to ``job.level`` with ``job.method`` and ``structure``."""
    if job.method not in RECONSTRUCTORS:
        structure.prune(model, job)
        return
    if not structure.reconstructable:
        raise PrunelabError(f"method '{job.method}' prunes weights, not {structure}")
    calib = [job.inputs(b) for b in job.batches(128)]
    sparsity: float | dict[str, float] = job.level
    if job.allocation_name not in ("uniform", "row") and structure.uses_allocation:
        # per-layer fractions from the allocation over the dense magnitudes
        scores = compute_scores(model, job.targets, "magnitude", job.generator)
        counts = ALLOCATIONS.get(job.allocation_name)(scores, job.level)
        sparsity = {n: counts[n] / scores[n].numel() for n in job.targets}
    prune_sequential(
        model,
        job.targets,
        calib,
        job.method,
        sparsity,
        structure,
        generator=job.generator,
        progress=job.progress,
    )
