"""Magnitude (Han et al. 2015) and the random baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria.base import criterion


@criterion("magnitude")
def magnitude(weight: Tensor, ctx: LayerContext) -> Tensor:
    """|W|: small weights matter least."""
    return weight.abs()


@criterion("random")
def random(weight: Tensor, ctx: LayerContext) -> Tensor:
    """Uniform noise from the seeded generator: the control every method must beat."""
    return torch.rand(weight.shape, generator=ctx.generator).to(weight.device)  # same draw anywhere
