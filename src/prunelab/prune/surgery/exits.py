"""Make a channel-masked model compute what its slimmed copy computes.

A channel mask zeroes a filter's weights, but the channel still leaves its conv/BN pair as a
constant (the conv's bias, or BatchNorm's ``beta - gamma * mean / std``), which downstream
layers see; the slimmed model has no such channel at all. :func:`silence_removed_channels`
zeroes the removed channels where they *leave*: the producer's bias and, when a BatchNorm
follows, its scale and shift; a gradient hook keeps them at zero through fine-tuning (Adam and
SGD leave a zero parameter with zero gradient at zero). Afterwards the masked model and
:func:`prunelab.prune.surgery.slim` of it agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.prune.apply import get_masks
from prunelab.prune.surgery.graph import NORMS, trace_channels


def _silence(param: Tensor | None, keep: Tensor) -> None:
    if param is None:
        return
    with torch.no_grad():
        param.mul_(keep.to(param.dtype))
    if param.requires_grad:
        param.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))


def silence_removed_channels(model: nn.Module, example_input: Tensor) -> list[str]:
    """Zero (and keep zero) the exits of every channel whose weight rows are all masked.

    Returns the names of the parameters changed.

    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
    ...                   nn.Linear(4 * 16, 2)).eval()
    >>> from prunelab.prune.apply import apply_masks
    >>> keep = torch.ones(4, 1, 3, 3, dtype=torch.bool); keep[1] = False
    >>> _ = apply_masks(m, {"0": keep})
    >>> silence_removed_channels(m, torch.randn(1, 1, 6, 6))
    ['0.bias', '1.weight', '1.bias']
    >>> float(m[1](m[0](torch.randn(2, 1, 6, 6)))[:, 1].detach().abs().max())
    0.0
    """
    masks = get_masks(model)
    rows = {n: k.reshape(k.shape[0], -1).any(1) for n, k in masks.items()}  # (out,) kept rows
    removed = {n: r for n, r in rows.items() if not bool(r.all())}
    if not removed:
        return []
    cg = trace_channels(model, example_input, eligible=set(rows))
    modules = dict(model.named_modules())
    changed = []
    for name, keep in removed.items():
        _silence(modules[name].bias, keep)
        if modules[name].bias is not None:
            changed.append(f"{name}.bias")
        out = cg.module_out.get(name)
        for norm, labels in cg.module_in.items():
            if isinstance(modules[norm], NORMS) and out is not None and labels == out:
                for attr in ("weight", "bias"):
                    if getattr(modules[norm], attr, None) is not None:
                        _silence(getattr(modules[norm], attr), keep)
                        changed.append(f"{norm}.{attr}")
    return changed
