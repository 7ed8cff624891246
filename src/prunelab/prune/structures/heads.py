"""Attention heads (and FFN neurons) of transformer encoder blocks, removed physically.

A *level* is the fraction of the blocks' Linear parameters removed (whole heads first, FFN
neurons for the rest with ``heads+ffn``; ``heads`` alone stops where whole heads run out), the
unit :func:`prunelab.prune.surgery.heads.plan_counts` plans in. No masks remain: the model is
smaller, and what it achieved is counted from its blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.masks import Masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure
from prunelab.prune.surgery.heads import block_params, prune_heads_ffn, transformer_blocks

CALIBRATION_BATCH = 32  # rows per calibration batch for the group scores


@dataclass(frozen=True)
class Heads(Structure):
    """Whole attention heads; with ``ffn``, also whole FFN neurons ("heads+ffn").

    >>> str(Heads()), str(Heads(ffn=True))
    ('heads', 'heads+ffn')
    """

    ffn: bool = False
    uses_allocation: ClassVar[bool] = False  # the same fraction of every block
    schedulable: ClassVar[bool] = False
    physical: ClassVar[bool] = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return "heads+ffn" if self.ffn else "heads"

    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        raise PrunelabError(f"structure '{self}' removes heads physically; it has no masks")

    def prune(self, model: nn.Module, job: Pruning) -> None:
        calib = job.batches(CALIBRATION_BATCH)
        prune_heads_ffn(model, job.level, job.method, calib, job.generator, ffn=self.ffn)

    def achieved(self, model: nn.Module, dense: nn.Module, example: Any) -> float:
        """Fraction of the blocks' Linear parameters removed."""
        before = sum(block_params(b) for b in transformer_blocks(dense))
        return 1 - sum(block_params(b) for b in transformer_blocks(model)) / before

    def shipped(self, model: nn.Module, example: Any) -> nn.Module:
        return model  # already physically smaller


STRUCTURES.add("heads", lambda spelling: Heads())
STRUCTURES.add("heads+ffn", lambda spelling: Heads(ffn=True))
