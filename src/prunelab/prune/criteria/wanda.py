"""Wanda (Sun et al. 2023): weight magnitude times input activation norm."""

from __future__ import annotations

from torch import Tensor

from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria.base import criterion


@criterion("wanda", needs=("input_norm",))
def wanda(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|W_ij| · ‖X_j‖₂, with ‖X_j‖ the norm of input feature (or channel) j over all tokens."""
    assert ctx.input_norm is not None
    shape = (1, -1) + (1,) * (weight.dim() - 2)  # broadcast over out dim and kernel dims
    return weight.abs() * ctx.input_norm.view(shape)
