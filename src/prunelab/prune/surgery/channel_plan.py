"""Which output channels survive: :class:`ChannelPlan`, built from masks or from scores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import Masks, channel_masks, check_sparsity
from prunelab.prune.surgery.graph import ChannelGraph, Key, trace_channels
from prunelab.prune.surgery.importance import group_scores, slice_scores
from prunelab.prune.targets import select_targets


@dataclass(frozen=True)
class ChannelPlan:
    """Kept output channels per prunable layer, in model order; layers not listed keep all.

    >>> plan = ChannelPlan.from_dict({"0": [0, 2]}, {"0": 4})
    >>> plan.kept("0"), plan.channel_sparsity
    ((0, 2), 0.5)
    """

    keep: tuple[tuple[str, tuple[int, ...]], ...]
    sizes: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        sizes = dict(self.sizes)
        for name, idx in self.keep:
            if name not in sizes:
                raise PrunelabError(f"channel plan keeps channels of '{name}' but gives no size")
            if not idx:
                raise PrunelabError(f"channel plan removes every channel of layer '{name}'")
            if list(idx) != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= sizes[name]:
                raise PrunelabError(
                    f"channel plan for '{name}' needs sorted unique indices in [0, {sizes[name]})"
                )

    @classmethod
    def from_dict(cls, keep: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> ChannelPlan:
        return cls(
            tuple((n, tuple(int(i) for i in sorted(k))) for n, k in keep.items()),
            tuple((n, int(sizes[n])) for n in keep),
        )

    @property
    def layers(self) -> list[str]:
        return [n for n, _ in self.keep]

    def kept(self, layer: str) -> tuple[int, ...]:
        return dict(self.keep)[layer]

    @property
    def channel_sparsity(self) -> float:
        """Fraction of the listed layers' output channels removed."""
        total = sum(n for _, n in self.sizes)
        return 1 - sum(len(k) for _, k in self.keep) / total if total else 0.0

    def masks(self, model: nn.Module) -> Masks:
        """Row masks (True = keep) shaped like each listed layer's weight."""
        modules = dict(model.named_modules())
        out = {}
        for name, idx in self.keep:
            w = modules[name].weight
            rows = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
            rows[list(idx)] = True
            out[name] = rows.view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone()
        return out


def _plan_from_groups(cg: ChannelGraph, keep_group: Mapping[Key, bool]) -> ChannelPlan:
    kept: dict[str, list[int]] = {n: [] for n in cg.producers}
    for name, n in cg.producers.items():
        for i in range(n):
            if cg.is_fixed((name, i)) or keep_group[cg.find((name, i))]:
                kept[name].append(i)
    return ChannelPlan.from_dict(kept, cg.producers)


def plan_from_masks(model: nn.Module, example_input: Tensor, masks: Masks) -> ChannelPlan:
    """Turn channel (row) masks into a plan that respects coupling.

    A row is kept when any of its weights is kept. Coupled channels (joined by a residual
    add) are kept when *any* layer in the coupled group keeps its channel, the conservative
    choice; channels that reach the output or an unsupported op are always kept.
    """
    rows = {n: m.reshape(m.shape[0], -1).any(1) for n, m in masks.items()}  # (out,)
    cg = trace_channels(model, example_input, eligible=set(rows))
    unknown = set(rows) - set(cg.producers)
    if unknown:
        raise PrunelabError(f"masks name layers that are not prunable producers: {sorted(unknown)}")
    for name, n in cg.producers.items():
        if rows[name].numel() != n:
            raise PrunelabError(f"mask for '{name}' has {rows[name].numel()} rows, layer has {n}")
    for name, op in cg.blockers.items():
        if not bool(rows[name].all()):
            raise PrunelabError(
                f"channels of '{name}' cannot be removed: they feed {op}, which structured "
                f"surgery does not support; exclude '{name}' or use an unstructured/N:M structure"
            )
    keep_group: dict[Key, bool] = {}
    for group in cg.groups():
        keep_group[cg.find(group[0])] = any(bool(rows[n][i]) for n, i in group)
    return _plan_from_groups(cg, keep_group)


def row_scores(scores: dict[str, Tensor], p: float = 1.0) -> dict[str, Tensor]:
    """Group norm per output channel: ``(sum_j s_ij^p)^(1/p)`` over each row's scores.

    With the magnitude criterion (s = |W|), p=1 is the filter's L1 norm (Li et al. 2017)
    and p=2 its L2 norm.

    >>> row_scores({"a": torch.tensor([[3., -4.], [1., 1.]]).abs()}, p=2)["a"]
    tensor([5.0000, 1.4142])
    """
    if p <= 0:
        raise PrunelabError(f"group norm order p must be > 0, got {p}")
    return {n: s.reshape(s.shape[0], -1).pow(p).sum(1).pow(1 / p) for n, s in scores.items()}


def plan_channels(
    model: nn.Module,
    example_input: Tensor,
    sparsity: float,
    method: str = "magnitude",
    allocation: str = "uniform",
    p: float = 1.0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
    coupled: bool = True,
) -> ChannelPlan:
    """Remove the ``sparsity`` fraction of channels with the lowest group score.

    With ``coupled`` (the default) a channel is scored by every parameter slice that leaves
    with it: its filter, its BatchNorm scale (magnitude only) and the consumers' input slices,
    over its whole coupled group (:mod:`prunelab.prune.surgery.importance`, as Torch-Pruning's
    group importance); otherwise by the p-norm of its filters' ``method`` scores alone (Li et
    al. 2017), summed over the group. ``allocation`` ("uniform": every layer family loses the
    same fraction; "global": lowest normalised scores overall) is applied to those group
    scores through :func:`prunelab.prune.masks.channel_masks`. Every layer keeps at least one
    channel.
    """
    sparsity = check_sparsity(sparsity)
    targets = select_targets(model, include, exclude, prune_last=True)
    scores = compute_scores(model, targets, method, generator, calibration)
    cg = trace_channels(model, example_input, eligible=set(targets))
    if coupled:
        per_key = slice_scores(model, cg, scores, p, norm_scales=method == "magnitude")
        families = group_scores(cg, per_key, p)
    else:
        rows = row_scores(scores, p)
        families = {}
        for group in cg.groups():
            family = "+".join(sorted({n for n, _ in group}))
            families.setdefault(family, []).append(
                (sum(float(rows[n][i]) for n, i in group), cg.find(group[0]))
            )
    fam_scores = {
        f: torch.tensor([s for s, _ in g], dtype=torch.float64) for f, g in families.items()
    }
    keep_rows = channel_masks(fam_scores, sparsity, allocation) if fam_scores else {}
    keep_group: dict[Key, bool] = {}
    for fam, members in families.items():
        keep = keep_rows[fam].clone()  # (groups in family,)
        if not keep.any():  # never empty a layer: keep its best channel
            keep[int(fam_scores[fam].argmax())] = True
        keep_group.update({root: bool(k) for (_, root), k in zip(members, keep)})
    return _plan_from_groups(cg, keep_group)
