"""The ``sensitivity`` allocation: per-layer sparsities from a one-layer-at-a-time scan.

The scan itself (:func:`prunelab.decide.sensitivity.sensitivity_analysis`) measures; this module
only turns its table into a plan. Treating each layer's damage ``D_l(s)`` (by default KL to
dense, which is smooth even where accuracy does not move yet) as additive, it minimises
``sum_l D_l(s_l)`` subject to ``sum_l s_l n_l = sparsity * N``: on the lower convex hull of each
measured curve, a layer is pruned further while its marginal damage *per pruned weight*
``D_l'(s) / n_l`` is below a common price ``lam``, and ``lam`` is bisected to meet the budget
(rule ``"marginal"``, the default). Rule ``"threshold"`` (Distiller-style) instead prunes every
layer up to a common damage level ``tau``, ignoring layer size. Fragile layers reach the price
(or ``tau``) early and keep more weights; a larger target only raises it, so plans (and masks)
nest across a ladder.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch  # noqa: F401  (used in the doctests)
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.allocation.base import ALLOCATIONS, Allocation, ModelAware
from prunelab.prune.allocation.plan import Plan, counts_from_plan, plan_sparsity, sizes_of

log = logging.getLogger(__name__)

ALLOCATIONS.add(
    "sensitivity",
    ModelAware("sensitivity", "from the dense model's per-layer sensitivity scan (Li et al. 2017)"),
)


def _damage_curves(sens: pd.DataFrame, by: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: levels (with 0) and the running-max damage (monotone non-decreasing)."""
    if by not in ("kl", "drop"):
        raise PrunelabError(f"sensitivity allocation ranks by 'kl' or 'drop', got '{by}'")
    missing = {"layer", "level", by} - set(sens.columns)
    if missing:
        raise PrunelabError(f"sensitivity table lacks columns {sorted(missing)}")
    curves = {}
    for layer, g in sens.groupby("layer", sort=False):
        g = g.groupby("level", as_index=False)[by].mean().sort_values("level")
        x, y = g["level"].to_numpy(float), g[by].to_numpy(float)
        if x[0] > 0:
            x, y = np.r_[0.0, x], np.r_[0.0, y]
        y = np.maximum.accumulate(np.maximum(y, 0.0))
        y = y + 1e-12 * x  # strictly increasing: ties resolve towards lower sparsity
        curves[str(layer)] = (x, y)
    return curves


def _lower_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the lower convex hull of a curve sorted by x (monotone chain)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()  # b lies on or above the chord a-i
            else:
                break
        hull.append(i)
    return x[hull], y[hull]


def _level_at_price(x: np.ndarray, y: np.ndarray, size: int, lam: float) -> float:
    """Furthest hull vertex reached while every segment's damage per weight is <= lam."""
    slopes = np.diff(y) / (np.diff(x) * size)  # non-decreasing on a convex hull
    return float(x[int(np.searchsorted(slopes, lam, side="right"))])


def _level_at(x: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Largest sparsity whose (linearly interpolated) damage is <= tau, within the ladder."""
    if tau >= y[-1]:
        return float(x[-1])
    j = int(np.searchsorted(y, tau, side="right"))  # y[j-1] <= tau < y[j]
    return float(x[j - 1] + (x[j] - x[j - 1]) * (tau - y[j - 1]) / (y[j] - y[j - 1]))


def sensitivity_plan(
    sens: pd.DataFrame,
    sparsity: float,
    sizes: dict[str, int] | None = None,
    by: str = "kl",
    rule: str = "marginal",
) -> Plan:
    """Per-layer sparsities reaching overall ``sparsity``, fragile layers pruned less.

    Layers are never pruned beyond the highest level measured for them. ``sizes`` defaults to
    the table's ``params`` column.

    >>> t = pd.DataFrame({"layer": ["a", "a", "b", "b"], "level": [0.5, 1.0] * 2,
    ...                   "params": [10] * 4, "kl": [0.1, 1.0, 0.01, 0.1]})
    >>> {k: round(v, 3) for k, v in sensitivity_plan(t, 0.3).items()}
    {'a': 0.0, 'b': 0.6}
    >>> {k: round(v, 3) for k, v in sensitivity_plan(t, 0.5, rule="threshold").items()}
    {'a': 0.263, 'b': 0.737}
    """
    curves = _damage_curves(sens, by)
    if sizes is None:
        first = sens.groupby("layer", sort=False)["params"].first()
        sizes = {str(k): int(v) for k, v in first.items()}
    missing = set(sizes) - set(curves)
    if missing:
        raise PrunelabError(f"no sensitivity measured for layers {sorted(missing)}")
    n = np.array([sizes[k] for k in sizes], float)
    cap = np.array([curves[k][0][-1] for k in sizes])
    target = float(sparsity) * n.sum()
    if target > (cap * n).sum() + 1e-9:
        raise PrunelabError(
            f"sparsity {sparsity:g} exceeds what the measured ladder allows "
            f"({(cap * n).sum() / n.sum():.4f}); measure sensitivity up to higher levels"
        )

    if rule == "marginal":
        hulls = {k: _lower_hull(*curves[k]) for k in sizes}
        steep = max(
            float(np.max(np.diff(h[1]) / (np.diff(h[0]) * sizes[k]), initial=0.0))
            for k, h in hulls.items()
        )

        def levels(lam: float) -> np.ndarray:
            return np.array([_level_at_price(*hulls[k], sizes[k], lam) for k in sizes])

        lo, hi = 0.0, steep * 2 + 1e-12
    elif rule == "threshold":

        def levels(lam: float) -> np.ndarray:
            return np.array([_level_at(*curves[k], lam) for k in sizes])

        lo, hi = 0.0, max(float(curves[k][1][-1]) for k in sizes)
    else:
        raise PrunelabError(f"sensitivity rule must be 'marginal' or 'threshold', got '{rule}'")
    for _ in range(200):  # bisection on the common price / damage threshold
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (levels(mid) * n).sum() < target else (lo, mid)
    s_lo, s_hi = levels(lo), levels(hi)
    t_lo, t_hi = (s_lo * n).sum(), (s_hi * n).sum()
    alpha = 0.0 if t_hi - t_lo < 1e-12 else (target - t_lo) / (t_hi - t_lo)
    plan = s_lo + np.clip(alpha, 0.0, 1.0) * (s_hi - s_lo)  # exact at the jump, if any
    return {k: float(v) for k, v in zip(sizes, plan)}


def sensitivity_allocation(
    sens: pd.DataFrame, by: str = "kl", rule: str = "marginal"
) -> Allocation:
    """An allocation ``fn(scores, sparsity) -> counts`` driven by one sensitivity table.

    Compute the table once per (model, method, seed), then reuse this for every level.

    >>> t = pd.DataFrame({"layer": ["a", "a", "b", "b"], "level": [0.5, 1.0] * 2,
    ...                   "params": [10] * 4, "kl": [0.1, 1.0, 0.01, 0.1]})
    >>> sensitivity_allocation(t)({"a": torch.zeros(10), "b": torch.zeros(10)}, 0.3)
    {'a': 0, 'b': 6}
    """

    def allocate(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        sizes = sizes_of(scores)
        plan = sensitivity_plan(sens, sparsity, sizes, by, rule)
        log.debug("sensitivity plan %s (overall %.4f)", plan, plan_sparsity(plan, sizes))
        return counts_from_plan(plan, sizes, sparsity)

    return allocate
