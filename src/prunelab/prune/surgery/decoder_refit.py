"""Re-fitting a decoder's kept blocks after whole blocks were removed.

Removing blocks ``i+1 … j-1`` hands block ``j`` a hidden state it never saw. Before any
end-to-end distillation, each kept block is fitted, one after another on the pruned model's
own inputs, so that its output matches the dense model's hidden state *where the next kept
block starts* (the dense output of block ``next − 1``): a block followed by a gap learns to
stand in for the blocks removed after it, the others absorb the error that reaches them (the
dense-target block fitting of :mod:`prunelab.prune.blockfit`, with the removed blocks' work
folded into the target). The idea is LLM-Streamline's (Chen et al. 2024, which trains a new
light layer per removed span against the same target) without a new layer type, so the model
keeps its standard architecture and reloads as it is.

Blocks before the first removed one are left as they are when they keep their full width
(they already compute the dense hidden states); blocks that stand in for ``g`` removed ones
get ``(1 + g) · steps`` Adam steps; the loss is the relative one by default (a decoder's first
position carries hidden states ~100× larger than the others, which would otherwise set the
whole fit).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.blockcalls import block_hidden, call_block, record_block_calls
from prunelab.prune.blockfit import BlockFitConfig, fit_block
from prunelab.prune.surgery.decoder import decoder_layers, linear_params
from prunelab.prune.surgery.decoder_plan import feed_windows

log = logging.getLogger(__name__)

REFIT = BlockFitConfig(steps=64, lr=2e-4, target="dense", loss="relative")


@dataclass(frozen=True)
class RefitResult:
    """Per kept block (in order): its dense index, the dense block whose output it was fitted
    to, the first and last-8-mean loss (NaN: not fitted, nothing was removed before it); and
    the seconds it all took."""

    blocks: tuple[tuple[int, int, float, float], ...]
    seconds: float


def refit_kept_blocks(
    model: nn.Module,
    dense: nn.Module,
    kept: Sequence[int],
    calibration: Sequence[Tensor],
    config: BlockFitConfig = REFIT,
    generator: torch.Generator | None = None,
) -> RefitResult:
    """Fit ``model``'s blocks in place (``model`` = ``dense`` with only blocks ``kept`` left,
    ascending dense indices) to the dense hidden states on ``calibration`` ((B, T) token ids).

    Every Linear and norm weight of a block trains; embeddings and the output head do not.
    The dense hidden states wanted are held for every window at once (windows × distinct
    target blocks × T × hidden floats: ~1.7 GB for SmolLM2's 147 × 256 tokens and 19 blocks).

    >>> import copy, transformers
    >>> from prunelab.prune.surgery.decoder import DecoderPlan, apply_plan
    >>> from prunelab.prune.surgery.decoder_plan import _full
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    >>> dense = transformers.LlamaForCausalLM(cfg).eval(); m = copy.deepcopy(dense)
    >>> keep = [0, 1, 3]; layers = decoder_layers(m)
    >>> _ = apply_plan(m, DecoderPlan(tuple(_full(l) if i in keep else None
    ...                                     for i, l in enumerate(layers))), {})
    >>> r = refit_kept_blocks(m, dense, keep, [torch.randint(0, 64, (2, 16))],
    ...                       BlockFitConfig(steps=40, lr=1e-2, loss="relative"))
    >>> [b[:2] for b in r.blocks]  # block 1 now stands in for block 2 too
    [(0, 0), (1, 2), (3, 3)]
    >>> r.blocks[1][3] < r.blocks[1][2]
    True
    """
    blocks, dense_blocks = decoder_layers(model), decoder_layers(dense)
    kept = list(kept)
    if len(kept) != len(blocks) or kept != sorted(set(kept)) or kept[-1] >= len(dense_blocks):
        raise PrunelabError(
            f"kept blocks {kept} do not describe a {len(blocks)}-block model cut from "
            f"{len(dense_blocks)} blocks"
        )
    if not calibration:
        raise PrunelabError("re-fitting kept blocks needs calibration windows")
    t0 = time.perf_counter()
    ends = [nxt - 1 for nxt in kept[1:]] + [len(dense_blocks) - 1]  # dense block to match
    # nothing removed up to block k (kept[k] == k == its end, all its width): the dense block
    exact = [
        start == k == end and linear_params(blocks[k]) == linear_params(dense_blocks[k])
        for k, (start, end) in enumerate(zip(kept, ends))
    ]
    targets = sorted({end for end, same in zip(ends, exact) if not same})
    wanted = _dense_outputs(dense, dense_blocks, targets, calibration)
    calls = record_block_calls(model, blocks, calibration)
    hidden = [block_hidden(*c) for c in calls[0]]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    was = model.training
    model.eval()
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    out = []
    try:
        for k, (block, start, end) in enumerate(zip(blocks, kept, ends)):
            run = [(h, *c) for h, c in zip(hidden, calls[k])]
            if exact[k]:
                with torch.no_grad():
                    hidden = [call_block(block, *r) for r in run]
                out.append((start, end, math.nan, math.nan))
                continue
            steps = config.steps * (1 + end - start)
            layers = [m for m in block.modules() if _fits(m)]
            cfg = dataclasses.replace(config, steps=steps)
            losses = fit_block(block, layers, run, wanted[end], cfg, generator)
            with torch.no_grad():
                hidden = [call_block(block, *r) for r in run]
            first, last = (losses[0], sum(losses[-8:]) / len(losses[-8:])) if losses else (0, 0)
            out.append((start, end, first, last))
            log.info("refit block %d -> dense %d: loss %.3g -> %.3g", start, end, first, last)
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.train(was)
    return RefitResult(tuple(out), time.perf_counter() - t0)


def _fits(module: nn.Module) -> bool:
    """A Linear layer or a norm with a weight (RMSNorm, LayerNorm)."""
    weight = getattr(module, "weight", None)
    norm = "norm" in type(module).__name__.lower() and isinstance(weight, Tensor)
    return isinstance(module, nn.Linear) or norm


@torch.no_grad()
def _dense_outputs(
    dense: nn.Module, blocks: nn.ModuleList, wanted: list[int], calibration: Sequence[Tensor]
) -> dict[int, list[Tensor]]:
    """The dense hidden state after each block in ``wanted``, for every calibration window."""
    out: dict[int, list[Tensor]] = {i: [] for i in wanted}

    def keep(i: int):
        def hook(_m: nn.Module, _a: tuple, o) -> None:
            out[i].append((o[0] if isinstance(o, tuple | list) else o).detach())

        return hook

    feed_windows(dense, calibration, [blocks[i].register_forward_hook(keep(i)) for i in wanted])
    return out
