"""Whole output channels (filters, neurons), scored as coupled groups and removable physically.

A *level* is the fraction of the model's Linear/Conv weights the slimmed model no longer has
(filters and their consumers' input slices), the same unit as every other structure's level. The
channel counts are found by bisection on the fraction of channels removed: removal only grows
with it. In a sweep the model stays masked (so it can be fine-tuned and compared like any
cell); the masks are exactly the ones the slimmed copy keeps (coupled channels together,
channels that reach an output kept), and removed channels are silenced where they leave, so the
masked model computes what its slimmed copy computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.allocation import Allocation
from prunelab.prune.apply import apply_masks, get_masks
from prunelab.prune.masks import Masks, channel_masks
from prunelab.prune.structures.base import STRUCTURES, Pruning, Structure
from prunelab.prune.surgery.channel_plan import plan_from_masks
from prunelab.prune.surgery.exits import silence_removed_channels
from prunelab.prune.surgery.importance import coupled_row_scores
from prunelab.prune.surgery.slim import slim
from prunelab.prune.targets import PRUNABLE_TYPES

BISECTIONS = 14  # channel fraction resolved to 1/16384: finer than any layer's channel count


def weight_count(model: nn.Module) -> int:
    """Weights of every Linear/Conv layer (what a channel level is a fraction of)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE_TYPES))


@dataclass(frozen=True)
class Channels(Structure):
    """Whole output channels / neurons (rows of a weight), removed physically when shipped.

    >>> import torch
    >>> s = {"a": torch.tensor([[1., 1.], [5., 5.], [2., 2.], [9., 9.]])}
    >>> Channels().masks(s, 0.5, "uniform")["a"][:, 0].tolist()  # the raw row selection
    [False, True, False, True]
    """

    name: ClassVar[str] = "channels"
    prunes_last: ClassVar[bool] = False  # the outputs are the classes (or boxes): never removed
    score_family: ClassVar[str] = "channels"

    def group_scores(self, model: nn.Module, example: Any, scores: dict[str, Tensor],
                     method: str) -> dict[str, Tensor]:  # fmt: skip
        """Coupled channel importance, as Torch-Pruning scores it (filter, BatchNorm scale and
        the consumers' input slices)."""
        return coupled_row_scores(model, example, scores, norm_scales=method == "magnitude")

    def masks(self, scores: dict[str, Tensor], fraction: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        """Rows selected at ``fraction`` of the channels (not yet a parameter level)."""
        return channel_masks(scores, fraction, allocation)

    def masks_at(self, model: nn.Module, example: Any, scores: dict[str, Tensor], level: float,
                 allocation: str | Allocation) -> Masks:  # fmt: skip
        """Masks removing as close to ``level`` of the weights as whole channels allow (the
        channel fraction bisected; a level beyond reach gets the most that can go)."""
        total = weight_count(model)

        def at(fraction: float) -> tuple[Masks, float] | None:
            try:
                raw = channel_masks(scores, fraction, allocation, quiet=True)
                plan = plan_from_masks(model, example, raw)
            except PrunelabError as e:
                if "removes every channel" in str(e):
                    return None  # a layer would lose every channel: too far
                raise
            return plan.masks(model), 1 - weight_count(slim(model, example, plan)) / total

        lo_f, lo, hi_f, hi = 0.0, at(0.0), 1.0, None
        assert lo is not None
        for _ in range(BISECTIONS):
            mid = (lo_f + hi_f) / 2
            got = at(mid)
            if got is None or got[1] >= level:
                hi_f, hi = mid, got or hi
            else:
                lo_f, lo = mid, got
        if hi is None or level - lo[1] < hi[1] - level:
            return lo[0]
        return hi[0]

    def prune(self, model: nn.Module, job: Pruning) -> None:
        scores = job.scores()
        apply_masks(
            model, self.masks_at(model, job.example, scores, job.level, job.allocation(scores))
        )
        silence_removed_channels(model, job.example)

    def finish(self, model: nn.Module, example: Any) -> None:
        silence_removed_channels(model, example)

    def achieved(self, model: nn.Module, dense: nn.Module, example: Any) -> float:
        """Fraction of the Linear/Conv weights the slimmed model no longer has."""
        if not get_masks(model):
            return 0.0
        return 1 - weight_count(self.shipped(model, example)) / weight_count(dense)

    def shipped(self, model: nn.Module, example: Any) -> nn.Module:
        """The physically slimmed copy."""
        return slim(model, example, get_masks(model))


STRUCTURES.add("channels", lambda spelling: Channels())
