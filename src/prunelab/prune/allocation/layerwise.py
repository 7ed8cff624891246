"""Layer-adaptive allocations (LAMP, ERK) and per-layer sparsity bounds.

Both allocations are *pooled orderings*: each layer gets a priority for every position of its
score-sorted weights (non-decreasing from the lowest score up), the priorities of all layers are
pooled, and the lowest ``round(sparsity * total)`` are pruned. Because the ordering does not
depend on the sparsity, prune counts grow monotonically with it (masks nest across a ladder) and
the overall target is met exactly, like ``global``.

Bounds wrap any allocation: :func:`bounded` keeps every layer's sparsity inside
``[low, high]`` and still meets the overall target when that is feasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.allocation.base import ALLOCATIONS, Allocation, global_counts


def lamp_scores(scores: Tensor) -> Tensor:
    """LAMP scores (Lee et al. 2021) of one layer, returned in ascending-score order.

    With ``w`` the layer's scores sorted ascending, ``lamp[u] = w[u]^2 / sum_{v >= u} w[v]^2``.
    The result is non-decreasing and its last entry is 1 (the layer's largest weight).
    Scores must be non-negative (criteria return them so; for magnitude they are ``|W|``).

    >>> lamp_scores(torch.tensor([3., 1., 2.])).tolist()  # sorted: 1, 2, 3
    [0.07142857142857142, 0.3076923076923077, 1.0]
    """
    if (scores < 0).any():
        raise PrunelabError("LAMP needs non-negative scores (e.g. |W|); got negative values")
    sq = torch.sort(scores.flatten().double()).values.pow(2)  # (n,) ascending
    tail = sq.flip(0).cumsum(0).flip(0)  # (n,) tail[u] = sum_{v >= u} sq[v]
    out = torch.where(tail > 0, sq / tail.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return torch.cummax(out, 0).values  # guard monotonicity against rounding


@ALLOCATIONS.register("lamp")
def lamp(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Prune the globally lowest LAMP scores (layer-adaptive magnitude, Lee et al. 2021).

    The criterion's scores stand in for ``|W|`` (for magnitude they are ``|W|``). Weights a
    schedule has already masked score ``-inf``: they come first, and LAMP ranks the rest.

    >>> lamp({"a": torch.tensor([1., 2., 3.]), "b": torch.tensor([10., 20.])}, 0.4)
    {'a': 1, 'b': 1}
    >>> lamp({"a": torch.tensor([-float("inf"), 2., 3.]), "b": torch.tensor([10., 20.])}, 0.2)
    {'a': 1, 'b': 0}
    """
    prio = {}
    for name, s in scores.items():
        flat = s.flatten()
        masked = torch.isneginf(flat)
        rest = lamp_scores(flat[~masked])  # (n - k,) ascending
        prio[name] = torch.cat(
            [torch.full((int(masked.sum()),), -math.inf, dtype=rest.dtype), rest]
        )
    return global_counts(prio, sparsity)


def erk_raw_density(shape: tuple[int, ...]) -> float:
    """Un-normalised ERK density (n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w).

    ``shape`` is the weight's shape (out, in, *kernel); Linear layers have no kernel term
    (Erdős–Rényi), convolutions add one term per kernel dimension (Evci et al. 2020).

    >>> erk_raw_density((4, 2)), erk_raw_density((4, 2, 3, 3))
    (0.75, 0.16666666666666666)
    """
    if len(shape) < 2:
        raise PrunelabError(f"ERK needs a weight with >= 2 dimensions, got shape {shape}")
    return sum(shape) / math.prod(shape)


def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """ERK keep-fractions per layer: ``min(1, eps * raw)``, ``eps`` solving the budget.

    Layers whose density would exceed 1 are made dense and ``eps`` re-solved over the rest
    (RigL's ``sparse_utils`` loop). Weight-weighted mean density equals ``1 - sparsity``.

    >>> d = erk_densities({"a": (100, 100), "b": (10, 100)}, 0.9)
    >>> round(d["a"], 4), round(d["b"], 4)
    (0.071, 0.3903)
    """
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: erk_raw_density(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = (1 - sparsity) * sum(numel.values()) - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


@ALLOCATIONS.register("erk")
def erk(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Erdős–Rényi-Kernel allocation (Evci et al. 2020): small layers stay denser.

    Pooled ordering: the weight of descending rank ``r`` in layer ``l`` (size ``n``) gets
    priority ``-(r + 0.5) / (n * raw_l)``; keeping the top ``K`` pooled weights keeps
    ``min(n, ~t * raw_l * n)`` per layer for one threshold ``t``, i.e. the ERK densities
    (within one weight per layer) with the overall count exact and capped layers dense.

    >>> erk({"a": torch.zeros(100, 100), "b": torch.zeros(10, 100)}, 0.9)
    {'a': 9290, 'b': 610}
    """
    prio = {}
    for name, s in scores.items():
        n = s.numel()
        up = torch.arange(n, dtype=torch.float64)  # ascending position u; rank r = n - 1 - u
        prio[name] = (up + 0.5 - n) / (n * erk_raw_density(tuple(s.shape)))  # (n,) increasing
    return global_counts(prio, sparsity)


@dataclass(frozen=True)
class Bounds:
    """Per-layer sparsity limits: every layer keeps its sparsity within ``[low, high]``.

    >>> Bounds(0.2, 0.95)
    Bounds(low=0.2, high=0.95)
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise PrunelabError(
                f"layer sparsity bounds need 0 <= low <= high <= 1, got [{self.low}, {self.high}]"
            )

    def counts(self, numel: int) -> tuple[int, int]:
        """(fewest, most) weights a layer of ``numel`` weights may lose."""
        return math.ceil(self.low * numel - 1e-9), math.floor(self.high * numel + 1e-9)


def bounded(allocation: Allocation, bounds: Bounds) -> Allocation:
    """Wrap ``allocation`` so every layer's sparsity stays within ``bounds``.

    The wrapped allocation is run at an effective sparsity ``s'`` (bisection), its counts are
    clipped to the bounds, and ``s'`` is the smallest value whose clipped total reaches the
    target: what the bounds forbid one layer to lose is taken from the others, in the
    allocation's own order. Counts stay monotone in sparsity (masks nest). The total equals
    the target exactly for pooled allocations (global, lamp, erk); for ``uniform`` it may
    exceed it by up to one weight per layer (its own rounding). Infeasible targets raise.

    >>> alloc = bounded(ALLOCATIONS.get("global"), Bounds(0.0, 0.5))
    >>> alloc({"a": torch.tensor([1., 2.]), "b": torch.tensor([5., 6., 7., 8.])}, 0.5)
    {'a': 1, 'b': 2}
    """

    def wrapped(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        limits = {n: bounds.counts(s.numel()) for n, s in scores.items()}
        total = sum(s.numel() for s in scores.values())
        target = round(sparsity * total)
        lo_sum, hi_sum = sum(lo for lo, _ in limits.values()), sum(hi for _, hi in limits.values())
        if not lo_sum <= target <= hi_sum:
            raise PrunelabError(
                f"sparsity {sparsity:g} is infeasible with layer bounds [{bounds.low:g}, "
                f"{bounds.high:g}]: reachable overall sparsity is "
                f"[{lo_sum / total:.4g}, {hi_sum / total:.4g}]"
            )

        def clipped(s: float) -> dict[str, int]:
            raw = allocation(scores, s)
            return {n: min(max(raw[n], limits[n][0]), limits[n][1]) for n in scores}

        lo, hi = 0.0, 1.0
        for _ in range(60):  # smallest s' in [0, 1] with clipped total >= target
            mid = (lo + hi) / 2
            if sum(clipped(mid).values()) >= target:
                hi = mid
            else:
                lo = mid
        return clipped(0.0) if sum(clipped(0.0).values()) >= target else clipped(hi)

    wrapped.__name__ = f"bounded_{getattr(allocation, '__name__', 'allocation')}"
    return wrapped
