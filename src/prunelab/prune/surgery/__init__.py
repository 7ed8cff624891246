"""Structured pruning with physical removal: smaller dense models (dependency-aware).

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
>>> small, plan = prune_channels(m, torch.randn(1, 1, 6, 6), sparsity=0.5)
>>> small[0].out_channels, small[3].in_features
(4, 64)
"""

from prunelab.prune.surgery.channel_plan import (
    ChannelPlan,
    plan_channels,
    plan_from_masks,
    row_scores,
)
from prunelab.prune.surgery.graph import ChannelGraph, trace_channels
from prunelab.prune.surgery.slim import prune_channels, slim

__all__ = [
    "ChannelGraph",
    "ChannelPlan",
    "plan_channels",
    "plan_from_masks",
    "prune_channels",
    "row_scores",
    "slim",
    "trace_channels",
]
