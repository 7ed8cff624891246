"""Per-layer sparsity plans (``{layer: fraction}``) turned into exact prune counts.

Sensitivity-based and searched allocations decide a *fraction* per layer; the masks need an
integer count per layer. :func:`counts_from_plan` rounds with the largest-remainder method so
the total count is exactly ``round(sparsity * total_weights)`` (the global budget holds to the
weight), and :func:`fixed_per_layer` wraps a plan as an allocation ``fn(scores, sparsity)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch  # noqa: F401  (used in the doctests)
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.allocation.base import ALLOCATIONS, Allocation, ModelAware

Plan = dict[str, float]

ALLOCATIONS.add(
    "searched",
    ModelAware("searched", "per-layer sparsities searched with Optuna (prunelab.decide.search)"),
)


def plan_sparsity(plan: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Overall sparsity implied by a plan: ``sum(s_l * n_l) / sum(n_l)``.

    >>> plan_sparsity({"a": 0.5, "b": 1.0}, {"a": 10, "b": 10})
    0.75
    """
    total = sum(sizes.values())
    return sum(plan[n] * sizes[n] for n in sizes) / total


def counts_from_plan(
    plan: Mapping[str, float], sizes: Mapping[str, int], sparsity: float | None = None
) -> dict[str, int]:
    """Integer prune counts following ``plan``, summing exactly to ``round(sparsity * N)``.

    ``sparsity`` defaults to the plan's own overall sparsity. Counts never exceed a layer's size;
    remainders go to the layers with the largest fractional parts (ties by layer order).

    >>> counts_from_plan({"a": 0.55, "b": 0.25}, {"a": 10, "b": 10})
    {'a': 6, 'b': 2}
    """
    missing = set(sizes) - set(plan)
    if missing:
        raise PrunelabError(f"sparsity plan has no entry for layers {sorted(missing)}")
    for name in sizes:
        if not 0.0 <= plan[name] <= 1.0 or not math.isfinite(plan[name]):
            raise PrunelabError(f"layer sparsity must be in [0, 1], got {plan[name]} for '{name}'")
    total = sum(sizes.values())
    target = plan_sparsity(plan, sizes) if sparsity is None else sparsity
    k = round(target * total)
    exact = {n: plan[n] * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], math.floor(exact[n])) for n in sizes}
    order = sorted(sizes, key=lambda n: -(exact[n] - math.floor(exact[n])))
    deficit = k - sum(counts.values())
    while deficit > 0:  # hand out the remainder, largest fractional part first
        room = [n for n in order if counts[n] < sizes[n]]
        if not room:
            raise PrunelabError(f"cannot prune {k} of {total} weights: every layer is full")
        for n in room[:deficit]:
            counts[n] += 1
        deficit = k - sum(counts.values())
    while deficit < 0:  # plan overshoots the budget: take back from the smallest remainders
        for n in [m for m in order if counts[m] > 0][deficit:]:
            counts[n] -= 1
        deficit = k - sum(counts.values())
    return counts


def fixed_per_layer(plan: Mapping[str, float], tolerance: float = 1e-3) -> Allocation:
    """An allocation ``fn(scores, sparsity) -> counts`` that applies one fixed plan.

    The requested sparsity must match the plan's overall sparsity within ``tolerance``
    (a plan made for 95 % cannot silently serve a 98 % cell).

    >>> alloc = fixed_per_layer({"a": 0.9, "b": 0.5})
    >>> alloc({"a": torch.zeros(10), "b": torch.zeros(10)}, 0.7)
    {'a': 9, 'b': 5}
    """
    frozen = dict(plan)

    def allocate(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        sizes = {n: s.numel() for n, s in scores.items()}
        implied = plan_sparsity(frozen, sizes)
        if abs(implied - sparsity) > tolerance:
            raise PrunelabError(
                f"per-layer plan gives overall sparsity {implied:.4f}, but {sparsity:.4f} was "
                "requested; compute the plan for this level"
            )
        return counts_from_plan(frozen, sizes, sparsity)

    return allocate


def plan_per_level(plans: Mapping[float, Mapping[str, float]]) -> Allocation:
    """An allocation that picks the plan made for the requested level (searched plans).

    >>> alloc = plan_per_level({0.5: {"a": 0.5}, 0.9: {"a": 0.9}})
    >>> alloc({"a": torch.zeros(10)}, 0.9)
    {'a': 9}
    """
    frozen = {float(k): dict(v) for k, v in plans.items()}

    def allocate(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        for level, plan in frozen.items():
            if abs(level - sparsity) < 1e-9:
                return fixed_per_layer(plan)(scores, sparsity)
        raise PrunelabError(
            f"no per-layer plan for sparsity {sparsity:g}; plans exist for "
            f"{', '.join(f'{k:g}' for k in sorted(frozen))}"
        )

    return allocate


def plan_from_counts(counts: Mapping[str, int], sizes: Mapping[str, int]) -> Plan:
    """Per-layer fractions from counts (e.g. what the global allocation chose).

    >>> plan_from_counts({"a": 5}, {"a": 10})
    {'a': 0.5}
    """
    return {n: counts[n] / sizes[n] for n in sizes}


def sizes_of(scores: Mapping[str, Tensor]) -> dict[str, int]:
    """Number of weights per layer, in the scores' order."""
    return {n: int(s.numel()) for n, s in scores.items()}
