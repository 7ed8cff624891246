"""Weight-level structures: unstructured and N:M masks.

A criterion's scores are thresholded into masks and applied; a reconstruction method (SparseGPT)
prunes these structures layer by layer instead (:mod:`prunelab.prune.oneshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.apply import apply_masks
from prunelab.prune.masks import Masks, masks_from_counts, nm_masks, resolve, row_masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure


def prune_masked(structure: Structure, model: nn.Module, job: Pruning) -> None:
    """Score (the dense model's cached scores), allocate and mask."""
    scores = job.scores()
    apply_masks(model, structure.masks(scores, job.level, job.allocation(scores)))


@dataclass(frozen=True)
class Unstructured(Structure):
    """Any individual weight may be removed; the allocation decides how many per layer.

    >>> import torch
    >>> Unstructured().masks({"a": torch.tensor([1., 2., 3., 4.])}, 0.5, "global")["a"].tolist()
    [False, False, True, True]
    """

    name: ClassVar[str] = "unstructured"
    reconstructable: ClassVar[bool] = True

    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        alloc = resolve(allocation)
        if getattr(alloc, "per_row", False):
            return row_masks(scores, level)
        return masks_from_counts(scores, alloc(scores, level))

    def prune(self, model: nn.Module, job: Pruning) -> None:
        prune_masked(self, model, job)


@dataclass(frozen=True)
class NM(Structure):
    """Semi-structured N:M: keep ``n`` of every ``m`` consecutive weights along the input dim.

    >>> NM(2, 4).fixed_level, str(NM(2, 4))
    (0.5, '2:4')
    """

    n: int
    m: int
    name: ClassVar[str] = "n:m"
    uses_allocation: ClassVar[bool] = False
    schedulable: ClassVar[bool] = False
    reconstructable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise PrunelabError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    @property
    def fixed_level(self) -> float:
        return self.sparsity

    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        if abs(level - self.sparsity) > 1e-9:
            raise PrunelabError(f"N:M {self} fixes sparsity at {self.sparsity:g}, got {level:g}")
        return nm_masks(scores, self)

    def prune(self, model: nn.Module, job: Pruning) -> None:
        prune_masked(self, model, job)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @classmethod
    def parse(cls, spelling: str) -> NM:
        """``"2:4"`` -> ``NM(2, 4)``."""
        n, _, m = spelling.partition(":")
        return cls(int(n), int(m))


STRUCTURES.add("unstructured", lambda spelling: Unstructured())
STRUCTURES.add("n:m", NM.parse)
