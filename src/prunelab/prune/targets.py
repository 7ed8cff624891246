"""Which parameters are prunable: by default the weights of Linear and Conv layers."""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from prunelab.errors import PrunelabError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weight(module: nn.Module) -> torch.Tensor:
    """The effective weight, also when a mask parametrization is attached."""
    return module.weight


def select_targets(
    model: nn.Module,
    include: tuple[str, ...] | list[str] | None = None,
    exclude: tuple[str, ...] | list[str] | None = None,
    prune_last: bool = True,
) -> dict[str, nn.Module]:
    """Prunable modules by qualified name, in model order.

    ``include``/``exclude`` are shell-style patterns on module names (``"encoder.*.fc1"``).
    ``prune_last=False`` keeps the final Linear (the classifier) dense.

    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(select_targets(m)), list(select_targets(m, prune_last=False))
    (['0', '2'], ['0'])
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if include:
        found = {n: m for n, m in found.items() if any(fnmatchcase(n, p) for p in include)}
    if exclude:
        found = {n: m for n, m in found.items() if not any(fnmatchcase(n, p) for p in exclude)}
    if not prune_last:
        linears = [n for n, m in found.items() if isinstance(m, nn.Linear)]
        if linears:
            found.pop(linears[-1])
    if not found:
        raise PrunelabError(
            "model has no prunable parameters (no Linear/Conv weights match the include/exclude "
            "patterns)"
        )
    for name, module in found.items():
        if not torch.isfinite(_weight(module)).all():
            raise PrunelabError(f"layer '{name}' has NaN or Inf weights; refusing to prune")
    return found
