"""Gradient-based saliency from calibration batches: first-order Taylor and SNIP."""

from __future__ import annotations

from torch import Tensor

from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria.base import criterion


@criterion("taylor", needs=("grad",))
def taylor(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|w · g|: first-order Taylor estimate of the loss change when w is set to zero."""
    assert ctx.grad is not None
    return (weight * ctx.grad).abs()


@criterion("snip", needs=("grad",))
def snip(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|g · w| (Lee et al. 2019): connection sensitivity ∂L/∂c at mask c = 1.

    The paper normalises by Σ|g · w| over *all* connections of the network, one positive
    constant, so the global ranking is that of |g · w| itself; normalising per layer instead
    would rescale layers against each other and change which weights a global threshold keeps.
    Differs from ``taylor`` only in intent (pruning at/near initialisation vs. after training).
    """
    assert ctx.grad is not None
    return (ctx.grad * weight).abs()
