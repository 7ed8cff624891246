"""The criterion type, its registry, and scoring every target layer once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.calibration import LayerContext, collect
from prunelab.registry import Registry

ScoreFn = Callable[[Tensor, LayerContext], Tensor]


@dataclass(frozen=True)
class Criterion:
    """A scoring rule plus the calibration statistics it needs (see prune.calibration)."""

    name: str
    fn: ScoreFn
    needs: frozenset[str] = frozenset()
    doc: str = ""


CRITERIA: Registry[Criterion] = Registry("method")


def criterion(name: str, needs: Iterable[str] = ()) -> Callable[[ScoreFn], ScoreFn]:
    """Register ``fn`` as a criterion under ``name`` (decorator)."""

    def deco(fn: ScoreFn) -> ScoreFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        CRITERIA.add(name, Criterion(name, fn, frozenset(needs), doc[0] if doc else ""))
        return fn

    return deco


def compute_scores(
    model: nn.Module,
    targets: dict[str, nn.Module],
    method: str,
    generator: torch.Generator | None = None,
    calibration: Iterable[Any] | None = None,
    task: Any = None,
) -> dict[str, Tensor]:
    """Score every target weight with criterion ``method``; the model is not modified.

    ``calibration`` holds ``(x, y)`` batches, or a ``task``'s batches when one is given.

    >>> from prunelab.prune.targets import select_targets
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> s = compute_scores(m, select_targets(m), "magnitude")
    >>> s["0"].shape
    torch.Size([2, 3])
    """
    crit = CRITERIA.get(method)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if crit.needs and calibration is None:
        raise PrunelabError(
            f"method '{method}' needs calibration data ({', '.join(sorted(crit.needs))})"
        )
    stats = collect(model, targets, calibration or [], crit.needs, task=task) if crit.needs else {}
    scores = {}
    for name, module in targets.items():
        ctx = LayerContext(generator=generator, **stats.get(name, {}))
        with torch.no_grad():
            w = module.weight.detach()
            s = crit.fn(w, ctx).to(torch.float64)
        if s.shape != w.shape:
            raise PrunelabError(
                f"criterion '{method}' returned shape {tuple(s.shape)} for {tuple(w.shape)}"
            )
        scores[name] = s
    return scores
