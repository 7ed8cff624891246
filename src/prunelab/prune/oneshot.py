"""One-shot pruning of a model by any method and structure: the one entry the sweep calls.

A criterion's method prunes through the structure (:meth:`Structure.prune`: masks, or physical
removal); a reconstruction method (SparseGPT, :data:`~prunelab.prune.reconstruct.RECONSTRUCTORS`)
prunes weight-level structures layer after layer on calibration inputs that pass through the
already-pruned layers, updating the kept weights. With ``job.sequential`` (the task's choice:
causal LMs) a criterion that needs calibration (Wanda) walks the layers the same way, its
scores compared within each output row, as Wanda's reference driver does.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.criteria import CRITERIA, compute_scores
from prunelab.prune.masks import resolve
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.sequential import SequentialConfig, prune_sequential
from prunelab.prune.structures import Pruning, Structure

LAYER_LEVELS = ("uniform", "row")  # allocations that give every layer the cell's level


def walks_layers(
    method: str, structure: Structure, sequential: bool, walk: SequentialConfig | None = None
) -> bool:
    """Whether ``method`` prunes ``structure`` layer after layer (reconstructions always;
    calibrated criteria when ``sequential``; magnitude and Wanda when ``walk`` re-fits the
    kept weights, e.g. ADMM after each mask).

    >>> from prunelab.prune.structures import Unstructured
    >>> walks_layers("wanda", Unstructured(), True), walks_layers("wanda", Unstructured(), False)
    (True, False)
    >>> from prunelab.prune.refine import RefineConfig
    >>> walks_layers("magnitude", Unstructured(), False, SequentialConfig(refine=RefineConfig()))
    True
    """
    if method in RECONSTRUCTORS:
        return True
    if not structure.reconstructable:
        return False
    needs = CRITERIA.get(method).needs
    if walk is not None and walk.refits:
        return needs <= frozenset({"input_norm"})
    return sequential and needs == frozenset({"input_norm"})


def prune_once(model: nn.Module, structure: Structure, job: Pruning) -> None:
    """Prune ``model`` in place to ``job.level`` with ``job.method`` and ``structure``."""
    if not walks_layers(job.method, structure, job.sequential, job.walk):
        structure.prune(model, job)
        return
    if not structure.reconstructable:
        raise PrunelabError(f"method '{job.method}' prunes weights, not {structure}")
    calib = [job.inputs(b) for b in job.batches(128)]
    sparsity: float | dict[str, float] = job.level
    if job.allocation_name not in LAYER_LEVELS and structure.uses_allocation:
        sparsity = _layer_levels(model, job)
    prune_sequential(
        model,
        job.targets,
        calib,
        job.method,
        sparsity,
        structure,
        config=replace(job.walk or SequentialConfig(), comparison=_comparison(job, structure)),
        generator=job.generator,
        progress=job.progress,
    )


def _comparison(job: Pruning, structure: Structure) -> str:
    """Where a criterion's scores compete in the walk: within output rows when the criterion
    walks without re-fitting too (Wanda on LLMs, as its paper does), else within the layer, so
    a re-fitting walk keeps the mask the criterion chooses without it."""
    return "row" if walks_layers(job.method, structure, job.sequential) else "layer"


def _layer_levels(model: nn.Module, job: Pruning) -> dict[str, float]:
    """Per-layer fractions from the cell's allocation, over the dense model's scores: the
    criterion's own, or magnitudes for a reconstruction (an allocation that names its outlier
    scores, OWL, gets Wanda's from the sweep)."""
    scores: dict[str, Tensor] = (
        compute_scores(model, job.targets, "magnitude", job.generator)
        if job.method in RECONSTRUCTORS
        else job.scores()
    )
    counts = resolve(job.allocation(scores))(scores, job.level)
    return {n: counts[n] / scores[n].numel() for n in job.targets}
