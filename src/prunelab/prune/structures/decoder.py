"""Attention heads, FFN neurons or whole blocks of Llama-style decoders, removed physically.

``decoder-heads``, ``decoder-ffn``, ``decoder-heads+ffn`` and ``decoder-blocks`` prune through
:func:`prunelab.prune.surgery.decoder_plan.prune_decoder`: FLAP's fluctuation scores (blocks:
ShortGPT's block influence) from one calibration pass over the task's training windows, FLAP's
bias compensation, and the grouped-query-attention rule (whole KV groups, or the same number of
query heads in every group), so the result still loads in transformers
(:mod:`prunelab.ship.hf_decoder`, export format ``hf-decoder``).

A *level* is the fraction of the decoder blocks' Linear parameters removed — the unit every
structure shares — and :meth:`DecoderStructure.achieved` counts it from the blocks that remain.
The structure scores by itself, so a sweep runs it once per level under its
:attr:`~DecoderStructure.own_method` (``flap``, or ``block-influence`` for blocks) whatever the
sweep's ``methods`` list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.masks import Masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure
from prunelab.prune.surgery.decoder import decoder_linear_params
from prunelab.prune.surgery.decoder_plan import prune_decoder

CALIBRATION_BATCH = 8  # token windows per calibration batch (× calibration_batches)
KINDS = ("heads", "ffn", "heads+ffn", "blocks")


@dataclass(frozen=True)
class DecoderStructure(Structure):
    """One of :data:`KINDS` of a Llama-style decoder, removed physically.

    >>> str(DecoderStructure("blocks")), DecoderStructure("ffn").physical
    ('decoder-blocks', True)
    """

    kind: str
    uses_allocation: ClassVar[bool] = False  # the plan allocates over blocks itself
    schedulable: ClassVar[bool] = False
    physical: ClassVar[bool] = True
    prunes_last: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PrunelabError(f"unknown decoder structure '{self.kind}'; valid: {KINDS}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"decoder-{self.kind}"

    @property
    def own_method(self) -> str:
        return "block-influence" if self.kind == "blocks" else "flap"

    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        raise PrunelabError(f"structure '{self}' removes parts physically; it has no masks")

    def prune(self, model: nn.Module, job: Pruning) -> None:
        calib = [job.inputs(b) for b in job.batches(CALIBRATION_BATCH)]  # (B, T) token ids
        if not calib:
            raise PrunelabError(f"structure '{self}' needs calibration windows")
        prune_decoder(model, calib, self.kind, job.level)

    def achieved(self, model: nn.Module, dense: nn.Module, example: Any) -> float:
        """Fraction of the decoder blocks' Linear parameters removed."""
        return 1 - decoder_linear_params(model) / decoder_linear_params(dense)

    def shipped(self, model: nn.Module, example: Any) -> nn.Module:
        return model  # already physically smaller


for _kind in KINDS:
    STRUCTURES.add(f"decoder-{_kind}", lambda spelling: DecoderStructure(spelling[8:]))
