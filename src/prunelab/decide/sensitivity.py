"""Per-layer sensitivity scan (Li et al. 2017; Distiller/SparseML style).

:func:`sensitivity_analysis` prunes *one layer at a time* over a ladder of levels (the rest of
the model dense, no fine-tuning) and records the validation metric and the KL to the dense
model: a tidy table ``layer, level, params, metric_name, metric, drop, kl`` (a heatmap layer x
level for the report).

The allocation this table implies lives with the other allocations:
:mod:`prunelab.prune.allocation.sensitivity`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS, evaluate, predict
from prunelab.prune.apply import folded_copy
from prunelab.prune.masks import masks_from_counts

if TYPE_CHECKING:
    from prunelab.tasks.base import Task

log = logging.getLogger(__name__)

DEFAULT_LADDER = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
COLUMNS = ["layer", "level", "params", "metric_name", "metric", "drop", "kl"]


def sensitivity_analysis(
    model: nn.Module,
    scores: dict[str, Tensor],
    data: Split,
    levels: Sequence[float] = DEFAULT_LADDER,
    metric: str = "accuracy",
    task: Task | None = None,
) -> pd.DataFrame:
    """Prune each scored layer alone at every level; return the tidy sensitivity table.

    ``drop`` is the metric's loss of quality vs the dense model in the metric's units
    (positive = worse, whatever the metric's direction); ``kl`` is KL(dense || pruned) in nats.
    The model is not modified. Rows at level 0.0 (the dense model) are included. With a
    non-classification ``task`` (detection, language) its own metrics are used (``metric`` is
    then one of the task's, e.g. its primary) and ``kl`` is NaN.

    >>> from prunelab.sources.data import load_dataset
    >>> from prunelab.sources.models import build_model
    >>> d = load_dataset("digits"); m = build_model("mlp-tiny", d.input_shape, 10)
    >>> s = {"1": m[1].weight.detach().abs()}
    >>> sensitivity_analysis(m, s, d.val, levels=[0.5]).shape
    (2, 7)
    """
    if not levels or any(not 0.0 < float(lv) <= 1.0 for lv in levels):
        raise PrunelabError(f"sensitivity levels must be in (0, 1], got {list(levels)}")
    work = folded_copy(model)
    modules = dict(work.named_modules())
    unknown = [n for n in scores if n not in modules]
    if unknown:
        raise PrunelabError(f"scores for unknown layers {unknown}")
    measure, sign = _measure(work, data, metric, task)
    dense = measure()[metric]
    rows = []
    for name, s in scores.items():
        weight = modules[name].weight
        saved = weight.detach().clone()
        rows.append([name, 0.0, s.numel(), metric, dense, 0.0, 0.0])
        for level in sorted(float(lv) for lv in levels):
            keep = masks_from_counts({name: s}, {name: round(level * s.numel())})[name]
            with torch.no_grad():
                weight.mul_(keep.to(weight.dtype))
            got = measure()
            with torch.no_grad():
                weight.copy_(saved)
            rows.append(
                [
                    name,
                    level,
                    s.numel(),
                    metric,
                    got[metric],
                    sign * (dense - got[metric]),
                    got.get("kl", math.nan),
                ]
            )
        log.debug("sensitivity of %s done", name)
    return pd.DataFrame(rows, columns=COLUMNS)


def _measure(
    model: nn.Module, data: Any, metric: str, task: Task | None
) -> tuple[Callable[[], dict[str, float]], float]:
    """A closure scoring ``model`` on ``data`` against its current (dense) outputs, and the
    metric's sign (+1 when higher is better)."""
    if task is None:  # the registered metrics
        spec = METRICS.get(metric)
        reference = predict(model, data.x)
        return (
            lambda: evaluate(model, data, reference, [metric, "kl"]),
            1.0 if spec.higher_is_better else -1.0,
        )
    info = task.info(metric)
    reference = task.predict(model, data)
    return lambda: task.evaluate(model, data, reference), info.sign
