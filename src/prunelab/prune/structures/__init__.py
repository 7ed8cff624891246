"""Structures: the granularity of pruning, one registry (see :mod:`.base` for the contract).

>>> sorted(STRUCTURES.names())  # doctest: +NORMALIZE_WHITESPACE
['channels', 'decoder-blocks', 'decoder-blocks-loss', 'decoder-blocks-loss+ffn', 'decoder-ffn',
 'decoder-heads', 'decoder-heads+ffn', 'decoder-sublayers-loss', 'heads', 'heads+ffn', 'n:m',
 'unstructured']
"""

import torch

from prunelab.prune.allocation import Allocation
from prunelab.prune.masks import Masks, check_sparsity
from prunelab.prune.structures.base import (
    STRUCTURES,
    Pruning,
    Structure,
    parse_structure,
    structure_names,
)
from prunelab.prune.structures.channels import Channels
from prunelab.prune.structures.decoder import DecoderStructure
from prunelab.prune.structures.heads import Heads
from prunelab.prune.structures.masked import NM, Unstructured

__all__ = [
    "NM",
    "STRUCTURES",
    "Channels",
    "DecoderStructure",
    "Heads",
    "Pruning",
    "Structure",
    "Unstructured",
    "parse_structure",
    "select_masks",
    "structure_names",
]


def select_masks(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    allocation: str | Allocation = "global",
    structure: Structure = Unstructured(),
) -> Masks:
    """Threshold scores into masks for one level (``structure.masks``).

    ``allocation`` is a registered name or an :data:`~prunelab.prune.allocation.Allocation`
    callable (e.g. one built from a sensitivity table or a searched plan). For N:M the sparsity
    is fixed by the pattern (``1 - n/m``) and must match; for channels it is the fraction of
    channels (rows) removed.

    >>> s = {"a": torch.tensor([1., 2., 3., 4.])}
    >>> select_masks(s, 0.5)["a"].tolist()
    [False, False, True, True]
    """
    return structure.masks(scores, check_sparsity(sparsity), allocation)
