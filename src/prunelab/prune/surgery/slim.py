"""Physical channel removal: a smaller dense copy of the model, same classes, same names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import folded_copy
from prunelab.prune.masks import Masks
from prunelab.prune.surgery.channel_plan import ChannelPlan, plan_channels, plan_from_masks
from prunelab.prune.surgery.graph import NORMS, PRODUCERS, ChannelGraph, Key, Labels, trace_channels


def shrink_producer(m: nn.Module, out_idx: Sequence[int], in_idx: Sequence[int]) -> None:
    """Keep rows ``out_idx`` and input columns ``in_idx`` of a Conv/Linear, in place."""
    out_t, in_t = (
        torch.as_tensor(out_idx, dtype=torch.long),
        torch.as_tensor(in_idx, dtype=torch.long),
    )
    w = m.weight.detach()
    depthwise = not isinstance(m, nn.Linear) and m.groups > 1
    w = w[out_t] if depthwise else w[out_t][:, in_t]  # (out', in'/groups, *kernel)
    m.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.detach()[out_t].clone(), requires_grad=m.bias.requires_grad)
    if isinstance(m, nn.Linear):
        m.in_features, m.out_features = len(in_idx), len(out_idx)
    else:
        m.in_channels, m.out_channels = len(in_idx), len(out_idx)
        if depthwise:
            m.groups = len(out_idx)


def shrink_norm(m: nn.Module, idx: Sequence[int]) -> None:
    """Keep features ``idx`` of a BatchNorm (affine parameters and running statistics)."""
    t = torch.as_tensor(idx, dtype=torch.long)
    for name in ("weight", "bias"):
        p = getattr(m, name)
        if p is not None:
            setattr(m, name, nn.Parameter(p.detach()[t].clone(), requires_grad=p.requires_grad))
    for name in ("running_mean", "running_var"):
        buf = getattr(m, name)
        if buf is not None:
            setattr(m, name, buf[t].clone())
    m.num_features = len(idx)


def _keep_fn(cg: ChannelGraph, plan: ChannelPlan):
    kept = {n: set(idx) for n, idx in plan.keep}
    for name in kept:
        if name not in cg.producers:
            raise PrunelabError(
                f"channel plan names '{name}', which is not a Conv/Linear in the model"
            )
        if dict(plan.sizes)[name] != cg.producers[name]:
            raise PrunelabError(
                f"channel plan gives '{name}' {dict(plan.sizes)[name]} channels, the model "
                f"{cg.producers[name]}"
            )

    def keep(k: Key) -> bool:
        return cg.is_fixed(k) or k[1] in kept.get(k[0], range(cg.producers.get(k[0], 0)))

    for name, n in cg.producers.items():
        for i in range(n):
            if cg.is_fixed((name, i)) and i not in kept.get(name, {i}):
                raise PrunelabError(
                    f"channel {i} of '{name}' cannot be removed: it reaches the model output "
                    "or an operation structured pruning does not support"
                )
    for group in cg.groups():
        if len({keep(k) for k in group}) > 1:
            raise PrunelabError(
                f"channel plan splits coupled channels {group[:4]}: a residual add or shared "
                "layer needs them removed together (build plans with plan_channels/plan_from_masks)"
            )
    return keep


def _indices(labels: Labels, keep) -> list[int]:
    return [i for i, k in enumerate(labels) if keep(k)]


def slim(model: nn.Module, example_input: Tensor, plan: ChannelPlan | Masks) -> nn.Module:
    """A physically smaller copy of ``model`` without the channels ``plan`` removes.

    ``plan`` is a :class:`ChannelPlan` or channel masks (``{layer: mask}``, rows all-False =
    removed, e.g. from ``select_masks(..., structure=Channels())``). Consumers lose the matching
    inputs: the next conv's input channels, BatchNorm features, and the ``H*W`` features per
    channel of a Linear after ``flatten``; channels coupled by residual adds go together. Mask
    parametrizations are made permanent on the copy; ``model`` itself is not changed.

    >>> m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> small = slim(m, torch.randn(1, 4), ChannelPlan.from_dict({"0": [0, 2, 5]}, {"0": 6}))
    >>> small[0].weight.shape, small[2].weight.shape
    (torch.Size([3, 4]), torch.Size([2, 3]))
    """
    if isinstance(plan, dict):
        plan = plan_from_masks(model, example_input, plan)
    work = folded_copy(model).train(model.training)
    cg = trace_channels(work, example_input, eligible=set(plan.layers))
    keep = _keep_fn(cg, plan)
    modules = dict(work.named_modules())
    for name, in_labels in cg.module_in.items():
        m = modules[name]
        in_idx = _indices(in_labels, keep)
        if isinstance(m, PRODUCERS):
            shrink_producer(m, _indices(cg.module_out[name], keep), in_idx)
        elif isinstance(m, NORMS):
            shrink_norm(m, in_idx)
        elif isinstance(m, nn.PReLU):  # one slope per channel
            idx = torch.as_tensor(in_idx, dtype=torch.long)
            m.weight = nn.Parameter(m.weight.detach()[idx].clone())
            m.num_parameters = len(in_idx)
    return work


def prune_channels(
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
) -> tuple[nn.Module, ChannelPlan]:
    """:func:`plan_channels` then :func:`slim`: the smaller model and the plan it followed.

    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> small, plan = prune_channels(m, torch.randn(1, 4), 0.5)
    >>> small[0].out_features, small[2].in_features, small[2].out_features
    (4, 4, 2)
    """
    plan = plan_channels(
        model,
        example_input,
        sparsity,
        method,
        allocation,
        p,
        include,
        exclude,
        calibration,
        generator,
        coupled,
    )
    return slim(model, example_input, plan), plan
