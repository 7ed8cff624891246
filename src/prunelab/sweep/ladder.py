"""Ladder fast path: a cell's scores do not depend on its level, so compute them once.

One-shot cells of the same (method, seed, structure family, targets) share the dense model,
the calibration batches and hence the scores; only the threshold differs per level (so masks
nest). :func:`cached_scores` memoises the calibration batches and ``compute_scores`` in the
context's per-process ``memo``, together with the generator state scoring leaves behind, so a
cell that hits the memo continues with exactly the random stream it would have had: results
are bit-identical with and without it. The memoised scores are a
:class:`~prunelab.prune.allocation.RankedScores`, so each sort (per layer, and pooled for
``global``) is
also done once per ladder instead of once per level.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunelab.prune.allocation import RankedScores
from prunelab.prune.criteria import compute_scores

if TYPE_CHECKING:
    from prunelab.sweep.cell import Cell


def score_key(cell: Cell) -> tuple:
    """What the dense model's scores depend on: everything but the level and allocation."""
    return (
        "scores",
        cell.method,
        cell.seed,
        cell.structure.score_family,
        cell.calibration_batches,
        cell.include,
        cell.exclude,
        cell.prune_last,
    )


def cached_scores(
    cell: Cell,
    memo: dict[tuple, Any] | None,
    model: nn.Module,
    targets: dict[str, nn.Module],
    train: Any,
    gen: torch.Generator,
    task: Any,
) -> tuple[list[Any], dict[str, Tensor]]:
    """(calibration batches, scores as the cell's structure ranks them) of the dense ``model``
    for ``cell``, memoised in ``memo``.

    ``memo=None`` disables the cache. On a hit, ``gen`` is set to the state it had after
    scoring, as if the scores had just been computed.
    """
    key = score_key(cell)
    if memo is not None and key in memo:
        calib, scores, state = memo[key]
        gen.set_state(state.clone())
        return calib, scores
    calib = list(islice(task.batches(train, 128, gen), cell.calibration_batches))
    scores = compute_scores(model, targets, cell.method, gen, calib, task=task)
    example = task.inputs(calib[0])[:1]  # (1, ...) traces channel coupling
    scores = cell.structure.group_scores(model, example, scores, cell.method)
    if memo is not None:
        scores = RankedScores(scores)  # sort orders computed once, shared by every level
        memo[key] = (calib, scores, gen.get_state().clone())
    return calib, scores


def score_entries(memo: dict[tuple, Any]) -> int:
    """How many (method, seed, ...) score sets a context holds."""
    return sum(1 for k in memo if k and k[0] == "scores")
