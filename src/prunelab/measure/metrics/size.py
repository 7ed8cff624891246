"""Size of the model: achieved sparsity and non-zero parameter counts."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch.nn.utils import parametrize

from prunelab.measure.metrics.base import Evaluation, metric
from prunelab.prune.targets import PRUNABLE_TYPES


@metric("sparsity", higher_is_better=True, fraction=True)
def sparsity(ev: Evaluation) -> float:
    """Fraction of exact zeros over all Linear/Conv weights."""
    return weight_sparsity(ev.model)


def weight_sparsity(
    model: torch.nn.Module, layers: Collection[torch.nn.Module] | None = None
) -> float:
    """Fraction of exact zeros over all Linear/Conv weights, or over ``layers``' weights
    (masks applied)."""
    mods = layers if layers is not None else model.modules()
    ws = [m.weight.detach() for m in mods if isinstance(m, PRUNABLE_TYPES)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def size_counts(
    model: torch.nn.Module, layers: Collection[torch.nn.Module] | None = None
) -> dict[str, float]:
    """``sparsity`` (over ``layers`` when given: the pruned ones), ``nonzeros`` and ``params``
    of any model (masks applied)."""
    with torch.no_grad():
        ps = _effective_params(model)
        return {
            "sparsity": weight_sparsity(model, layers),
            "nonzeros": float(sum(int((p != 0).sum()) for p in ps)),
            "params": float(sum(p.numel() for p in ps)),
        }


@metric("nonzeros", higher_is_better=False)
def nonzeros(ev: Evaluation) -> float:
    """Number of non-zero parameters in the whole model (biases and norms included)."""
    with torch.no_grad():
        return float(sum(int((p != 0).sum()) for p in _effective_params(ev.model)))


@metric("params", higher_is_better=False)
def params(ev: Evaluation) -> float:
    """Number of parameters in the whole model (shrinks only under structural removal)."""
    return float(sum(p.numel() for p in _effective_params(ev.model)))


def _effective_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters as the forward pass sees them: a masked weight counts, not its original."""
    out = []
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # holds the unmasked ``original``
        out.extend(p for _, p in module.named_parameters(recurse=False))
        if parametrize.is_parametrized(module):
            out.extend(getattr(module, name) for name in module.parametrizations)
    return out
