"""Statistics criteria need, collected once from forward/backward hooks on calibration data.

A criterion declares ``needs`` (a subset of :data:`STATS`); :func:`collect` gathers exactly
those for every target layer, so a sweep pays for calibration once per (method, seed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError

STATS = frozenset({"grad", "input_norm"})


@dataclass
class LayerContext:
    """What a criterion may look at beyond the weight itself."""

    generator: torch.Generator
    grad: Tensor | None = None  # mean loss gradient w.r.t. the weight, weight-shaped
    input_norm: Tensor | None = None  # L2 norm of each input feature/channel over all tokens
    extra: dict[str, Tensor] = field(default_factory=dict)


def _input_sqsum(module: nn.Module, x: Tensor) -> Tensor:
    """Per-input-feature sum of squares: (in_features,) for Linear, (in_channels,) for Conv."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).pow(2).sum(0)  # (tokens, in) -> (in,)
    return x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)  # (B, C, *) -> (C,)


def collect(
    model: nn.Module,
    targets: dict[str, nn.Module],
    batches: Iterable[tuple[Tensor, Tensor]],
    needs: frozenset[str],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    task: Any = None,
) -> dict[str, dict[str, Tensor]]:
    """Run calibration batches through ``model`` and return ``{layer: {stat: tensor}}``.

    Batches are ``(x, y)`` pairs scored with ``loss_fn(model(x), y)``, or, with a ``task``
    (:class:`prunelab.tasks.Task`), whatever its batches are: forwards run
    ``model(task.inputs(batch))`` and gradients ``task.loss(model, batch)``.
    The model's weights and its parameters' ``.grad`` fields are not changed.
    """
    unknown = needs - STATS
    if unknown:
        raise PrunelabError(
            f"unknown calibration statistics {sorted(unknown)}; valid: {sorted(STATS)}"
        )
    stats: dict[str, dict[str, Tensor]] = {n: {} for n in targets}
    if not needs:
        return stats
    handles = []
    if "input_norm" in needs:
        for name, module in targets.items():

            def hook(
                mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor, name: str = name
            ) -> None:
                sq = _input_sqsum(mod, inputs[0].detach())
                stats[name]["input_norm"] = stats[name].get("input_norm", 0) + sq

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in batches:
            n_batches += 1
            if task is not None:
                loss = partial(task.loss, model, batch)
                forward = partial(model, task.inputs(batch))
            else:
                loss = partial(lambda b: loss_fn(model(b[0]), b[1]), batch)
                forward = partial(model, batch[0])
            if "grad" in needs:
                for name, g in _effective_grads(targets, loss).items():
                    stats[name]["grad"] = stats[name].get("grad", 0) + g
            else:
                with torch.no_grad():
                    forward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise PrunelabError("calibration needs at least one batch of data")
    for name in targets:
        if "input_norm" in stats[name]:
            stats[name]["input_norm"] = stats[name]["input_norm"].sqrt()
        if "grad" in stats[name]:
            stats[name]["grad"] = stats[name]["grad"] / n_batches
    return stats


def _effective_grads(
    targets: dict[str, nn.Module], loss: Callable[[], Tensor]
) -> dict[str, Tensor]:
    """dL/dW for each target's *effective* weight, also where a mask zeroes it.

    Under ``parametrize.cached()`` a masked weight is computed once and reused by the forward
    pass, so autograd differentiates w.r.t. that tensor; ``.grad`` fields are not touched.
    """
    with parametrize.cached():
        weights = [m.weight for m in targets.values()]
        grads = torch.autograd.grad(loss(), weights)
    return {name: g.detach() for name, g in zip(targets, grads)}
