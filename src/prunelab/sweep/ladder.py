"""Ladder fast path: a cell's scores do not depend on its level, so compute them once.

One-shot cells of the same (method, seed, structure family, targets) share the dense model,
the calibration batches and hence the scores; only the threshold differs per level (and masks
nest). :class:`ScoreCache` memoises ``compute_scores`` together with the generator state it
leaves behind, so a cell that hits the cache continues with exactly the random stream it
would have had: results are bit-identical with and without the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunelab.apply import apply_masks
from prunelab.criteria import compute_scores
from prunelab.masks import Masks, check_sparsity, select_masks
from prunelab.structure import Channels, parse_structure
from prunelab.targets import select_targets

if TYPE_CHECKING:
    from prunelab.data import Split
    from prunelab.sweep.cell import Cell


@dataclass
class ScoreCache:
    """``{key: (scores, generator state after scoring)}``; lives in a sweep's Context."""

    items: dict[tuple, tuple[dict[str, Tensor], Tensor]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0


def score_key(cell: Cell) -> tuple:
    """What the scores depend on: everything but the level and the allocation."""
    channels = isinstance(parse_structure(cell.structure), Channels)
    return (cell.method, cell.seed, channels, cell.calibration_batches, cell.include,
            cell.exclude, cell.prune_last)


def prune_cell(model: nn.Module, cell: Cell, train: Split, gen: torch.Generator,
               cache: ScoreCache | None) -> Masks:
    """Same as :func:`prunelab.api.prune` for the cell, with scores memoised in ``cache``."""
    check_sparsity(cell.level)
    structure = parse_structure(cell.structure)
    prune_last = cell.prune_last and not isinstance(structure, Channels)
    targets = select_targets(model, cell.include or None, cell.exclude or None, prune_last)
    key = score_key(cell)
    if cache is not None and key in cache.items:
        scores, state = cache.items[key]
        gen.set_state(state.clone())
        cache.hits += 1
    else:
        calib = islice(train.batches(128, shuffle=True, generator=gen), cell.calibration_batches)
        scores = compute_scores(model, targets, cell.method, gen, calib)
        if cache is not None:
            cache.items[key] = (scores, gen.get_state().clone())
            cache.misses += 1
    masks = select_masks(scores, cell.level, cell.allocation, structure)
    apply_masks(model, masks)
    return masks
