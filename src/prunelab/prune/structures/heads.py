"""Attention heads (and FFN neurons) of transformer encoder blocks, removed physically.

A *level* is the fraction of the blocks' Linear parameters removed (whole heads first, FFN
neurons for the rest with ``heads+ffn``; ``heads`` alone stops where whole heads run out), the
unit :func:`prunelab.prune.surgery.heads.plan_counts` plans in. No masks remain: the model is
smaller, and what it achieved is counted from its blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.masks import Masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure
from prunelab.prune.surgery.encoder import kept_indices
from prunelab.prune.surgery.heads import (
    BlockPlan,
    apply_plan,
    block_params,
    prune_heads_ffn,
    transformer_blocks,
)

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

    def kept(self, model: nn.Module) -> dict[str, Tensor]:
        """Per block ``i``: ``"i.heads"`` and ``"i.ffn"``, the indices it kept (int64).

        >>> from prunelab.sources.models.encoder import tiny_bert
        >>> enc = tiny_bert(heads=4); _ = prune_heads_ffn(enc, 0.5)
        >>> {k: len(v) for k, v in Heads(ffn=True).kept(enc).items()}
        {'0.heads': 2, '0.ffn': 32, '1.heads': 2, '1.ffn': 32}
        """
        out = {}
        for i, layer in enumerate(transformer_blocks(model)):
            heads, ffn = kept_indices(layer)
            out[f"{i}.heads"], out[f"{i}.ffn"] = torch.tensor(heads), torch.tensor(ffn)
        return out

    def restore(self, model: nn.Module, kept: dict[str, Tensor], example: Any) -> None:
        n = len(transformer_blocks(model))
        try:
            plans = [BlockPlan(tuple(kept[f"{i}.heads"].tolist()), tuple(kept[f"{i}.ffn"].tolist()))
                     for i in range(n)]  # fmt: skip
        except KeyError as e:
            raise PrunelabError(f"stored plan has no block {e} of the model's {n}") from None
        apply_plan(model, plans)


STRUCTURES.add("heads", lambda spelling: Heads())
STRUCTURES.add("heads+ffn", lambda spelling: Heads(ffn=True))
