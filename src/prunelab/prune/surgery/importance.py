"""Coupled channel importance: a channel is scored by *everything that leaves with it*.

Removing output channel ``i`` of a conv removes its filter ``W[i]``, the matching BatchNorm
feature, and the consumers' input slices (``W_next[:, i]``; the ``H*W`` columns per channel of
a Linear after ``flatten``); channels coupled by a residual add leave together. Scoring only
the filter ignores most of what is lost. As in DepGraph / Torch-Pruning's
``GroupMagnitudeImportance`` (Fang et al. 2023), a coupled group's importance is the p-norm
over all of those slices' scores, ``(sum_slices sum_j s_j^p)^(1/p)``, and group scores are
divided by their family's mean so that families of different sizes compare under a global
allocation.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from prunelab.prune.surgery.graph import (
    NORMS,
    PRODUCERS,
    ChannelGraph,
    Key,
    Labels,
    trace_channels,
)


def _slices_in(m: nn.Module, s: Tensor, p: float) -> Tensor:
    """Per input feature of a Conv/Linear consumer: ``sum s^p`` over its input slice."""
    if not isinstance(m, nn.Linear) and m.groups > 1:  # depthwise: row i reads channel i
        return s.reshape(s.shape[0], -1).pow(p).sum(1)  # (in,)
    return s.transpose(0, 1).reshape(s.shape[1], -1).pow(p).sum(1)  # (in,)


def _add(acc: dict[Key, float], labels: Labels, values: Tensor, cg: ChannelGraph) -> None:
    for k, v in zip(labels, values.tolist(), strict=True):
        if k[0] in cg.producers and not cg.is_fixed(k):  # removable channels only
            acc[k] += v


def slice_scores(
    model: nn.Module,
    cg: ChannelGraph,
    scores: dict[str, Tensor],
    p: float = 1.0,
    norm_scales: bool = True,
) -> dict[Key, float]:
    """``sum s^p`` per removable key over the producer's row, its norms and consumers' inputs.

    ``scores`` are per-weight scores (same shapes as the weights) of Conv/Linear layers; a
    layer without scores contributes nothing. ``norm_scales`` adds ``|gamma_i|^p`` of every
    BatchNorm the channel passes (a magnitude, so only meaningful for magnitude scores).
    """
    acc: dict[Key, float] = defaultdict(float)
    modules = dict(model.named_modules())
    for name in cg.producers:  # the filters themselves
        s = scores.get(name)
        if s is not None:
            rows = s.reshape(s.shape[0], -1).pow(p).sum(1)  # (out,)
            _add(acc, [(name, i) for i in range(rows.numel())], rows, cg)
    for name, labels in cg.module_in.items():  # what reads the channel
        m = modules[name]
        if isinstance(m, PRODUCERS) and name in scores:
            _add(acc, labels, _slices_in(m, scores[name].detach(), p), cg)
        elif isinstance(m, NORMS) and norm_scales and m.weight is not None:
            _add(acc, labels, m.weight.detach().abs().pow(p), cg)
    return dict(acc)


def group_scores(
    cg: ChannelGraph, per_key: dict[Key, float], p: float = 1.0
) -> dict[str, list[tuple[float, Key]]]:
    """Family (the set of producers a group spans) -> [(normalised group score, group root)].

    A group's score is ``(sum over its keys of per_key)^(1/p)``, divided by the mean of its
    family (Torch-Pruning's ``normalizer="mean"``).
    """
    families: dict[str, list[tuple[float, Key]]] = {}
    for group in cg.groups():
        family = "+".join(sorted({n for n, _ in group}))
        score = sum(per_key.get(k, 0.0) for k in group) ** (1 / p)
        families.setdefault(family, []).append((score, cg.find(group[0])))
    for fam, members in families.items():
        mean = sum(s for s, _ in members) / len(members)
        if mean > 0:
            families[fam] = [(s / mean, root) for s, root in members]
    return families


def coupled_row_scores(
    model: nn.Module,
    example_input: Tensor,
    scores: dict[str, Tensor],
    p: float = 1.0,
    norm_scales: bool = True,
) -> dict[str, Tensor]:
    """Per-weight scores whose row sums are each channel's coupled importance.

    For :func:`prunelab.prune.masks.channel_masks` (which ranks channels by row sums): a row's
    sum becomes :func:`slice_scores` of its channel (filter, BatchNorm scale, consumers' input
    slices) divided by the layer's mean (Torch-Pruning's ``normalizer="mean"``, so a global
    ranking compares channels relative to their layer); channels the tracer cannot remove keep
    their plain row sums before the normalisation.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = m[0].weight.copy_(torch.tensor([[1., 1.], [2., 2.]]))
    ...     _ = m[2].weight.copy_(torch.tensor([[9., 0.1]]))
    >>> s = {n: m[int(n)].weight.abs() for n in ("0", "2")}
    >>> r = coupled_row_scores(m, torch.randn(1, 2), s)["0"].sum(1)
    >>> [round(v, 4) for v in r.tolist()]  # 2 + 9 (its consumer weight) vs 4 + 0.1, over the mean
    [1.457, 0.543]
    """
    cg = trace_channels(model, example_input, eligible=set(scores))
    per_key = slice_scores(model, cg, scores, p, norm_scales)
    out = {}
    for name, s in scores.items():
        plain = s.detach().reshape(s.shape[0], -1).pow(p).sum(1)  # (out,)
        row = torch.tensor(
            [per_key.get((name, i), float(plain[i])) for i in range(s.shape[0])],
            dtype=s.dtype,
        )  # (out,)
        if row.mean() > 0:
            row = row / row.mean()
        width = s[0].numel()
        out[name] = (row / width).view((-1,) + (1,) * (s.dim() - 1)).expand_as(s).clone()
    return out
