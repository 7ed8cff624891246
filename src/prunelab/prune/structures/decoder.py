"""Attention heads, FFN neurons or whole blocks of Llama-style decoders, removed physically.

``decoder-heads``, ``decoder-ffn``, ``decoder-heads+ffn``, ``decoder-blocks``,
``decoder-blocks-loss``, ``decoder-sublayers-loss`` and ``decoder-blocks-loss+ffn`` prune through
:func:`prunelab.prune.surgery.decoder_plan.prune_decoder`: FLAP's fluctuation scores (blocks:
ShortGPT's block influence; blocks-loss: blocks removed greedily by calibration loss;
sublayers-loss: attention and MLP sub-layers removed greedily by calibration loss per
parameter; blocks-loss+ffn: blocks by loss for part of the level, then one FFN width for every
kept block, FLAP-scored on the cut model) from the task's training windows, FLAP's
bias compensation, and the grouped-query-attention rule (whole KV groups, or the same number of
query heads in every group), so the result still loads in transformers
(:mod:`prunelab.ship.hf_decoder`, export format ``hf-decoder``).

With a ``[reconstruction]`` table whose ``block_fit_steps`` > 0, the block structures then
re-fit every kept block to the dense hidden states where the next kept block starts
(:mod:`prunelab.prune.surgery.decoder_refit`; ``block_fit_lr``, relative loss); the table's
other keys concern layer walks and do not apply here.

A *level* is the fraction of the decoder blocks' Linear parameters removed — the unit every
structure shares — and :meth:`DecoderStructure.achieved` counts it from the blocks that remain.
The structure scores by itself, so a sweep runs it once per level under its
:attr:`~DecoderStructure.own_method` (``flap``, ``block-influence`` for blocks, ``block-loss``
for blocks-loss, ``sublayer-loss`` for sublayers-loss, ``block-loss+flap`` for
blocks-loss+ffn) whatever the
sweep's ``methods`` list.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.masks import Masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure
from prunelab.prune.surgery.decoder import (
    DecoderPlan,
    LayerPlan,
    apply_plan,
    decoder_layers,
    decoder_linear_params,
)
from prunelab.prune.surgery.decoder_plan import prune_decoder
from prunelab.prune.surgery.decoder_refit import REFIT, refit_kept_blocks

CALIBRATION_BATCH = 8  # token windows per calibration batch (× calibration_batches)
KINDS = (
    "heads",
    "ffn",
    "heads+ffn",
    "blocks",
    "blocks-loss",
    "sublayers-loss",
    "blocks-loss+ffn",
)
KEPT = "_prunelab_decoder_kept"  # the plan a pruned model carries (an attribute, not state)


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
        own = {
            "blocks": "block-influence",
            "blocks-loss": "block-loss",
            "sublayers-loss": "sublayer-loss",
            "blocks-loss+ffn": "block-loss+flap",
        }
        return own.get(self.kind, "flap")

    @property
    def progress_phase(self) -> str:
        """Loss searches report the percent of the level removed so far, not layers."""
        return "search removals" if "loss" in self.kind else "prune layers"

    @property
    def fits_blocks(self) -> bool:
        """Block removal: ``[reconstruction] block_fit_steps`` re-fits the kept blocks
        (:func:`prunelab.prune.surgery.decoder_refit.refit_kept_blocks`). Not sub-layer removal:
        a block that lost its attention cannot imitate its dense output, and on the tests' tiny
        decoder the re-fit made the validation KL worse."""
        return self.kind.startswith("blocks")

    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        raise PrunelabError(f"structure '{self}' removes parts physically; it has no masks")

    def prune(self, model: nn.Module, job: Pruning) -> None:
        calib = [job.inputs(b) for b in job.batches(CALIBRATION_BATCH)]  # (B, T) token ids
        if not calib:
            raise PrunelabError(f"structure '{self}' needs calibration windows")
        fit = job.walk.block_fit if job.walk is not None and self.fits_blocks else None
        dense = copy.deepcopy(model) if fit is not None else None
        r = prune_decoder(model, calib, self.kind, job.level, progress=job.progress)
        if fit is not None:
            config = dataclasses.replace(REFIT, steps=fit.steps, lr=fit.lr)
            refit_kept_blocks(model, dense, r.plan.kept_blocks, calib, config, job.generator)
        model.__dict__[KEPT] = _encode(r.plan, r.shifts)  # what kept() returns

    def kept(self, model: nn.Module) -> dict[str, Tensor]:
        """``"blocks"``: the original indices of the blocks kept; per kept block ``i``:
        ``"i.kv"``, ``"i.q"``, ``"i.ffn"`` (indices kept) and its bias compensation
        ``"i.attn_shift"`` / ``"i.mlp_shift"`` when it has one."""
        if KEPT not in model.__dict__:
            raise PrunelabError(f"the model was not pruned by structure '{self}'")
        return dict(model.__dict__[KEPT])

    def restore(self, model: nn.Module, kept: dict[str, Tensor], example: Any) -> None:
        plan, shifts = _decode(kept, len(decoder_layers(model)))
        apply_plan(model, plan, shifts)
        model.__dict__[KEPT] = dict(kept)

    def achieved(self, model: nn.Module, dense: nn.Module, example: Any) -> float:
        """Fraction of the decoder blocks' Linear parameters removed."""
        return 1 - decoder_linear_params(model) / decoder_linear_params(dense)

    def shipped(self, model: nn.Module, example: Any) -> nn.Module:
        return model  # already physically smaller


def _encode(plan: DecoderPlan, shifts: dict) -> dict[str, Tensor]:
    out = {"blocks": torch.tensor(plan.kept_blocks, dtype=torch.long)}
    for i, p in enumerate(plan.layers):
        if p is None:
            continue
        for key, idx in (("kv", p.kv_heads), ("q", p.q_heads), ("ffn", p.ffn)):
            out[f"{i}.{key}"] = torch.tensor(idx, dtype=torch.long)
        attn, mlp = shifts.get(i, (None, None))
        for key, t in (("attn_shift", attn), ("mlp_shift", mlp)):
            if t is not None:
                out[f"{i}.{key}"] = t.detach().cpu().clone()
    return out


def _decode(kept: dict[str, Tensor], n_blocks: int) -> tuple[DecoderPlan, dict]:
    try:
        blocks = set(kept["blocks"].tolist())
        layers = tuple(
            LayerPlan(*(tuple(kept[f"{i}.{k}"].tolist()) for k in ("kv", "q", "ffn")))
            if i in blocks else None
            for i in range(n_blocks)
        )  # fmt: skip
    except KeyError as e:
        raise PrunelabError(f"stored decoder plan lacks {e}") from None
    shifts = {i: (kept.get(f"{i}.attn_shift"), kept.get(f"{i}.mlp_shift")) for i in blocks}
    return DecoderPlan(layers), shifts


for _kind in KINDS:
    STRUCTURES.add(f"decoder-{_kind}", lambda spelling: DecoderStructure(spelling[8:]))
