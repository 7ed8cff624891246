"""Allocations that need the model and data, not only scores: resolved per cell.

``sensitivity`` (Li et al. 2017): a one-layer-at-a-time sensitivity table of the dense model,
computed once per (method, seed) and reused across every level, so masks still nest.
``searched``: an Optuna search of per-layer sparsities at each level (see
:mod:`prunelab.decide.search`),
seeded with the global and uniform plans; its trials are stored with the run.
An allocation that names the scores it measures outliers on (``owl``: Wanda's, as the paper)
gets them from the dense model whatever the cell's method (magnitude, SparseGPT, ...), computed
once per (criterion, seed) on the cell's calibration batches.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.decide.search import SearchConfig, search_allocation
from prunelab.decide.sensitivity import sensitivity_analysis
from prunelab.prune.allocation import (
    ALLOCATIONS,
    Allocation,
    ModelAware,
    global_counts,
    sensitivity_allocation,
    uniform,
)
from prunelab.prune.allocation.plan import fixed_per_layer, plan_from_counts, sizes_of
from prunelab.prune.criteria import compute_scores
from prunelab.training import TrainConfig

MODEL_AWARE = tuple(n for n in ALLOCATIONS.names() if isinstance(ALLOCATIONS.get(n), ModelAware))
SENSITIVITY_VAL_ROWS = 2500


def check_allocation(name: str) -> None:
    """Fail with the valid names (and a "did you mean") when ``name`` is not registered."""
    ALLOCATIONS.get(name)


def sensitivity_table(ctx: Any, dense: nn.Module, scores: dict[str, Tensor], key: tuple):
    """The dense model's sensitivity table for these scores, memoised in the sweep context."""

    if key not in ctx.memo:
        ctx.memo[key] = layer_sensitivity(ctx, dense, scores)
    return ctx.memo[key]


def layer_sensitivity(ctx: Any, dense: nn.Module, scores: dict[str, Tensor]):
    """The sensitivity scan on the first rows of the tuning slice (never the rows the decision
    reads; the validation split when nothing tunes), in the task's primary metric."""
    val = ctx.task.subset(ctx.tuning_data().val, SENSITIVITY_VAL_ROWS)
    return sensitivity_analysis(dense, scores, val, metric=ctx.task.primary, task=ctx.task)


def resolve_allocation(
    cell: Any,
    ctx: Any,
    dense: nn.Module,
    targets: dict[str, nn.Module],
    scores: dict[str, Tensor],
    calibration: list,
    gen: torch.Generator,
) -> tuple[str | Allocation, dict[str, Any]]:
    """The allocation for ``cell`` and any run-level records it produced (JSON-able)."""
    if cell.allocation == "sensitivity":
        table = sensitivity_table(ctx, dense, scores, ("sensitivity", cell.method, cell.seed))

        return sensitivity_allocation(table), {
            f"sensitivity/{cell.method}/seed{cell.seed}": table.to_dict("records")
        }
    if cell.allocation == "searched":
        sizes = sizes_of(scores)
        seeds = {
            name: plan_from_counts(fn(scores, cell.level), sizes)
            for name, fn in (("global", global_counts), ("uniform", uniform))
        }
        cfg = SearchConfig(
            n_trials=cell.search_trials,
            train=TrainConfig(epochs=0.1),
            val_subset=2000,
            seed=cell.seed,
        )
        res = search_allocation(  # scored on the tuning slice, never the decision's rows
            dense,
            ctx.tuning_data(),
            targets,
            cell.method,
            cell.level,
            cfg,
            gen,
            calibration=calibration,
            seed_plans=seeds,
        )
        trials = res.trials.assign(plan=res.trials["plan"].astype(str))
        return fixed_per_layer(res.plan), {
            f"search/{cell.cell_id}": {
                "plan": res.plan,
                "value": res.value,
                "trials": trials.to_dict("records"),
            }
        }
    source = getattr(ALLOCATIONS.get(cell.allocation), "scores_from", None)
    if source is not None and source != cell.method:
        key = ("outlier-scores", source, cell.seed, cell.calibration_batches, tuple(targets))
        if key not in ctx.memo:
            ctx.memo[key] = outlier_scores(ctx, cell, dense, targets, source)
        return scored_on(ALLOCATIONS.get(cell.allocation), ctx.memo[key]), {}
    return cell.allocation, {}


def outlier_scores(
    ctx: Any, cell: Any, dense: nn.Module, targets: dict[str, nn.Module], criterion: str
) -> dict[str, Tensor]:
    """The dense model's ``criterion`` scores on the cell's calibration batches (own seeded
    draw, so the cell's random stream is untouched)."""
    gen = torch.Generator().manual_seed(cell.seed)
    calib = list(islice(ctx.task.batches(ctx.data.train, 128, gen), cell.calibration_batches))
    return compute_scores(dense, targets, criterion, gen, calib, task=ctx.task)


def scored_on(allocation: Allocation, outlier: dict[str, Tensor]) -> Allocation:
    """``allocation``'s per-layer counts computed on ``outlier`` scores instead of the cell's."""

    def allocate(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        return allocation(outlier, sparsity)

    return allocate
