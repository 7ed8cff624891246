"""Gradient-based saliency from calibration batches: first-order Taylor.

There is no separate ``snip``: SNIP's connection sensitivity (Lee et al. 2019) at the given
weights is ``|g · w| / Σ|g · w|``. The denominator is one positive constant over the whole
network, so it changes neither a global ranking nor any per-layer one, and every allocation
here ranks within layers or globally: the masks would be exactly ``taylor``'s. (SNIP's real
difference from Taylor pruning is *when* it is applied, at initialisation, which is a choice of
weights, not of criterion.)
"""

from __future__ import annotations

from torch import Tensor

from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria.base import criterion


@criterion("taylor", needs=("grad",))
def taylor(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|w · g|: first-order Taylor estimate of the loss change when w is set to zero."""
    assert ctx.grad is not None
    return (weight * ctx.grad).abs()
