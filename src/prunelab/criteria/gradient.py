"""Gradient-based saliency from calibration batches: first-order Taylor and SNIP."""

from __future__ import annotations

from torch import Tensor

from prunelab.calibration import LayerContext
from prunelab.criteria.base import criterion


@criterion("taylor", needs=("grad",))
def taylor(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|w · g|: first-order Taylor estimate of the loss change when w is set to zero."""
    assert ctx.grad is not None
    return (weight * ctx.grad).abs()


@criterion("snip", needs=("grad",))
def snip(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|g · w| / Σ|g · w| (Lee et al. 2019): connection sensitivity, normalised per layer."""
    assert ctx.grad is not None
    s = (ctx.grad * weight).abs()
    return s / s.sum().clamp(min=1e-12)
