"""Unstructured and N:M pruning of a sentence encoder with the core criteria and masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.nlp.encoder import TextEncoder, encoder_targets
from prunelab.prune.apply import apply_masks
from prunelab.prune.criteria import CRITERIA, compute_scores
from prunelab.prune.masks import Masks, select_masks
from prunelab.prune.structure import Structure, Unstructured


def token_batches(
    encoder: TextEncoder, sentences: Sequence[str], batch_size: int = 32
) -> list[tuple[Tensor, Tensor]]:
    """Calibration batches ``(ids (B, T), dummy labels (B,))``, grouped by length.

    The encoder derives its attention mask from the pad id, so these plug straight into
    :func:`prunelab.prune.calibration.collect` / :func:`prunelab.compute_scores`. Padding positions
    still pass through the Linear layers; grouping by length keeps them few.
    """
    ids = encoder.tokenize(sentences)
    order = torch.argsort((ids != encoder.pad_id).sum(1), stable=True)
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        out.append((ids[idx], torch.zeros(len(idx), dtype=torch.long)))
    return out


def prune_encoder(
    encoder: TextEncoder,
    method: str = "magnitude",
    sparsity: float = 0.5,
    structure: Structure | None = None,
    calibration_sentences: Sequence[str] | None = None,
    allocation: str = "uniform",
    attention: bool = True,
    ffn: bool = True,
    generator: torch.Generator | None = None,
) -> Masks:
    """Mask the encoder's block Linear layers in place; returns the masks.

    ``method`` is any registered criterion; ``wanda`` needs ``calibration_sentences`` (a few
    hundred is enough). ``structure`` defaults to unstructured; ``allocation`` is the allocation
    ("uniform" = same sparsity per layer).
    """
    crit = CRITERIA.get(method)
    if crit.needs and not calibration_sentences:
        raise PrunelabError(f"method '{method}' needs calibration sentences")
    if "grad" in crit.needs:
        raise PrunelabError(
            f"method '{method}' needs labels and a loss; not supported for "
            "sentence encoders (use magnitude or wanda)"
        )
    targets = encoder_targets(encoder, attention=attention, ffn=ffn)
    calib = token_batches(encoder, calibration_sentences) if crit.needs else None
    scores = compute_scores(encoder, targets, method, generator, calib)
    masks = select_masks(scores, sparsity, allocation, structure or Unstructured())
    apply_masks(encoder, masks)
    return masks
