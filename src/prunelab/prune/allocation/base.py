"""Per-layer sparsity allocation: how many weights each layer loses for a target sparsity.

An allocation maps ``(scores, sparsity)`` to a prune count per layer. Counts grow
monotonically with sparsity, so masks thresholded from the same scores nest across a ladder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.registry import Registry

Allocation = Callable[[dict[str, Tensor], float], dict[str, int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


@dataclass(frozen=True)
class ModelAware:
    """A registered allocation that is resolved per cell from the dense model and data.

    ``sensitivity`` (a per-layer scan) and ``searched`` (an Optuna search) cannot be computed
    from scores alone; the sweep resolves them into a plain allocation
    (:mod:`prunelab.sweep.model_aware`). Calling one directly explains that.

    >>> ModelAware("x", "doc")({}, 0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: allocation 'x' needs the dense model and data: ...
    """

    name: str
    doc: str

    def __call__(self, scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
        raise PrunelabError(
            f"allocation '{self.name}' needs the dense model and data: run it through "
            "prunelab.sweep, or build it with prunelab.prune.allocation.sensitivity / "
            "prunelab.decide.search"
        )


class RankedScores(dict):
    """Scores (``{layer: Tensor}``) that remember their stable sort orders once computed.

    Every threshold (per layer, per row, pooled across layers) goes through one of these
    orders. A ladder thresholds the same scores at many levels, so the sweep's score cache
    hands cells a ``RankedScores`` and each sort happens once. Treat it as read-only: the
    orders are those of the tensors at the time of the first sort.

    >>> r = RankedScores({"a": torch.tensor([3., 1., 2.])})
    >>> r.order("a").tolist(), r.order("a") is r.order("a")
    ([1, 2, 0], True)
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._orders: dict[object, Any] = {}

    def order(self, name: str) -> Tensor:
        """Stable ascending argsort of layer ``name``'s flattened scores."""
        if name not in self._orders:
            self._orders[name] = torch.argsort(self[name].flatten(), stable=True)
        return self._orders[name]

    def row_order(self, name: str) -> Tensor:
        """Stable ascending argsort within each output row of layer ``name``: (out, in*k...)."""
        key = ("rows", name)
        if key not in self._orders:
            s = self[name]
            self._orders[key] = torch.argsort(s.reshape(s.shape[0], -1), dim=1, stable=True)
        return self._orders[key]

    def pooled(self) -> tuple[Tensor, Tensor]:
        """(owner layer index per pooled position, stable ascending order of pooled scores)."""
        key = ("pooled", tuple(self))
        if key not in self._orders:
            flat = torch.cat([s.flatten() for s in self.values()])  # (total,)
            owner = torch.cat(
                [torch.full((s.numel(),), i, device=s.device) for i, s in enumerate(self.values())]
            )
            self._orders[key] = (owner, torch.argsort(flat, stable=True))
        return self._orders[key]


def ranked(scores: dict[str, Tensor]) -> RankedScores:
    """``scores`` as a :class:`RankedScores` (itself when it already is one)."""
    return scores if isinstance(scores, RankedScores) else RankedScores(scores)


@ALLOCATIONS.register("uniform")
def uniform(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Every layer pruned to the same sparsity (layerwise).

    >>> uniform({"a": torch.zeros(10), "b": torch.zeros(4)}, 0.5)
    {'a': 5, 'b': 2}
    """
    return {n: round(sparsity * s.numel()) for n, s in scores.items()}


def global_counts(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """The lowest ``sparsity`` fraction of all scores pooled across layers.

    Ties are broken by position (stable sort), so counts are exact and nested.

    >>> global_counts({"a": torch.tensor([1., 5.]), "b": torch.tensor([2., 3., 4.])}, 0.6)
    {'a': 1, 'b': 2}
    """
    names = list(scores)
    owner, order = ranked(scores).pooled()
    k = round(sparsity * owner.numel())
    counts = torch.bincount(owner[order[:k]], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


ALLOCATIONS.add("global", global_counts)


@ALLOCATIONS.register("row")
def row_counts(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Every output row (neuron/filter) pruned to the same sparsity (Wanda's comparison group).

    Sun et al. 2023 compare weights per output row; :func:`prunelab.prune.masks.select_masks`
    thresholds each row on its own, and these are the resulting per-layer counts.

    >>> row_counts({"a": torch.zeros(3, 10)}, 0.3)
    {'a': 9}
    """
    return {
        n: s.shape[0] * round(sparsity * (s.numel() // max(s.shape[0], 1)))
        for n, s in scores.items()
    }


row_counts.per_row = True  # type: ignore[attr-defined]
