"""Measured latency of a sweep cell's model, opt-in (``prunelab sweep --latency``).

The model timed is the cell's model with its masks folded into plain weights (what a dense
runtime would execute; unstructured zeros buy no speed there), in eager PyTorch, through
:func:`prunelab.measure.metrics.efficiency.compare_latency`: median of its repeats at batch 1
and at batch :data:`LARGE_BATCH`. The torch thread count used is stored next to the times
(``latency_threads``): a time means nothing without it. One measurement serves all three
metrics of an evaluation (kept in :attr:`Evaluation.cache`).
"""

from __future__ import annotations

from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import Evaluation, metric
from prunelab.measure.metrics.efficiency import Latency, compare_latency
from prunelab.prune.apply import folded_copy

LARGE_BATCH = 256
LATENCY_METRICS = ("latency_b1_ms", f"latency_b{LARGE_BATCH}_ms", "latency_threads")
_KEY = "latency"


def _measured(ev: Evaluation, name: str) -> dict[int, Latency]:
    if _KEY not in ev.cache:
        x = ev.cache.get("example_input", ev.inputs)
        if not isinstance(x, Tensor):
            raise PrunelabError(f"metric '{name}' needs an example input (Evaluation.inputs)")
        ev.cache[_KEY] = compare_latency({"m": folded_copy(ev.model)}, x[:1], (1, LARGE_BATCH))["m"]
    return ev.cache[_KEY]  # type: ignore[return-value]


@metric("latency_b1_ms", higher_is_better=False)
def latency_b1_ms(ev: Evaluation) -> float:
    """Measured median ms of one forward pass at batch 1 (masks folded, eager PyTorch)."""
    return _measured(ev, "latency_b1_ms")[1].median_ms


@metric(f"latency_b{LARGE_BATCH}_ms", higher_is_better=False)
def latency_large_ms(ev: Evaluation) -> float:
    """Measured median ms of one forward pass at batch 256 (masks folded, eager PyTorch)."""
    return _measured(ev, f"latency_b{LARGE_BATCH}_ms")[LARGE_BATCH].median_ms


@metric("latency_threads", higher_is_better=False)
def latency_threads(ev: Evaluation) -> float:
    """Torch threads the latency columns were measured with (context, not a quality)."""
    return float(_measured(ev, "latency_threads")[1].threads)
