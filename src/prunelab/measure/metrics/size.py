"""Size of the model: achieved sparsity and non-zero parameter counts."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from prunelab.measure.metrics.base import Evaluation, metric
from prunelab.prune.targets import PRUNABLE_TYPES


def _prunable_weights(ev: Evaluation) -> list[torch.Tensor]:
    return [m.weight.detach() for m in ev.model.modules() if isinstance(m, PRUNABLE_TYPES)]


@metric("sparsity", higher_is_better=True)
def sparsity(ev: Evaluation) -> float:
    """Fraction of exact zeros over all Linear/Conv weights."""
    ws = _prunable_weights(ev)
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


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
