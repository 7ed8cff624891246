"""Allocations that need the model and data, not only scores: resolved per cell.

``sensitivity`` (Li et al. 2017): a one-layer-at-a-time sensitivity table of the dense model,
computed once per (method, seed) and reused across every level, so masks still nest.
``searched``: an Optuna search of per-layer sparsities at each level (see :mod:`prunelab.search`),
seeded with the global and uniform plans; its trials are stored with the run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunelab.allocation import ALLOCATIONS, Allocation, global_counts, uniform
from prunelab.errors import PrunelabError
from prunelab.finetune import TrainConfig

MODEL_AWARE = ("sensitivity", "searched")
SENSITIVITY_VAL_ROWS = 2500


def allocation_names() -> list[str]:
    return sorted([*ALLOCATIONS.names(), *MODEL_AWARE])


def check_allocation(name: str) -> None:
    if name not in MODEL_AWARE and name not in ALLOCATIONS:
        raise PrunelabError(f"unknown allocation '{name}'; valid: {', '.join(allocation_names())}")


def sensitivity_table(ctx: Any, dense: nn.Module, scores: dict[str, Tensor], key: tuple):
    """The dense model's sensitivity table for these scores, memoised in the sweep context."""
    from prunelab.sensitivity import sensitivity_analysis

    if key not in ctx.memo:
        ctx.memo[key] = sensitivity_analysis(
            dense, scores, ctx.data.val.subset(SENSITIVITY_VAL_ROWS)
        )
    return ctx.memo[key]


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
        from prunelab.sensitivity import sensitivity_allocation

        return sensitivity_allocation(table), {
            f"sensitivity/{cell.method}/seed{cell.seed}": table.to_dict("records")
        }
    if cell.allocation == "searched":
        from prunelab.plan import fixed_per_layer, plan_from_counts, sizes_of
        from prunelab.search import SearchConfig, search_allocation

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
        res = search_allocation(
            dense,
            ctx.data,
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
    return cell.allocation, {}
