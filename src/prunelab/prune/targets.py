"""Which parameters are prunable: by default the weights of Linear and Conv layers."""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.sources.hf import DECODER_PATTERNS
from prunelab.sources.models.encoder import ENCODER_PATTERNS, TextEncoder

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weight(module: nn.Module) -> torch.Tensor:
    """The effective weight, also when a mask parametrization is attached."""
    return module.weight


def select_targets(
    model: nn.Module,
    include: tuple[str, ...] | list[str] | None = None,
    exclude: tuple[str, ...] | list[str] | None = None,
    prune_last: bool = True,
) -> dict[str, nn.Module]:
    """Prunable modules by qualified name, in model order.

    ``include``/``exclude`` are shell-style patterns on module names (``"encoder.*.fc1"``).
    ``prune_last=False`` keeps the final Linear (the classifier) dense.

    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(select_targets(m)), list(select_targets(m, prune_last=False))
    (['0', '2'], ['0'])
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if include:
        found = {n: m for n, m in found.items() if any(fnmatchcase(n, p) for p in include)}
    if exclude:
        found = {n: m for n, m in found.items() if not any(fnmatchcase(n, p) for p in exclude)}
    if not prune_last:
        linears = [n for n, m in found.items() if isinstance(m, nn.Linear)]
        if linears:
            found.pop(linears[-1])
    if not found:
        raise PrunelabError(
            "model has no prunable parameters (no Linear/Conv weights match the include/exclude "
            "patterns)"
        )
    for name, module in found.items():
        if not torch.isfinite(_weight(module)).all():
            raise PrunelabError(f"layer '{name}' has NaN or Inf weights; refusing to prune")
    return found


def decoder_targets(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear layers inside the decoder blocks (attention and MLP); embeddings, norms and
    the output head (``lm_head``, often tied to the embeddings) are left dense."""
    return select_targets(model, include=DECODER_PATTERNS)


def encoder_targets(
    encoder: TextEncoder, attention: bool = True, ffn: bool = True
) -> dict[str, nn.Module]:
    """Linear layers of the transformer blocks: q/k/v/o projections and/or FFN in/out.

    Embeddings, LayerNorms and any pooler are never included.
    """

    found = select_targets(encoder, include=ENCODER_PATTERNS)
    out = {}
    for name, module in found.items():
        is_attn = ".attention." in name
        if (is_attn and attention) or (not is_attn and ffn):
            out[name] = module
    if not out:
        raise PrunelabError("no encoder targets selected (attention=False and ffn=False?)")
    return out
