"""The dense model's sensitivity scan as sweep work: one job per layer, run like a cell.

Every sweep records a magnitude sensitivity table of the dense model (one layer pruned at a
time over a ladder, Li et al. 2017) for the report's heatmap. Each layer's rows are
independent, so the scan is split into :class:`ScanJob` s that any executor schedules next to
the cells: on Ray or a process pool the scan spreads over the workers instead of running alone
in the driver before the first cell. The concatenated rows equal one
:func:`~prunelab.decide.sensitivity.sensitivity_analysis` call over all layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunelab.progress import Progress
from prunelab.prune.criteria import compute_scores
from prunelab.prune.targets import select_targets
from prunelab.sweep.cell import Cell, CellResult, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.model_aware import layer_sensitivity


@dataclass(frozen=True)
class ScanJob:
    """Scan one prunable layer of the dense model of ``cell``'s sweep."""

    cell: Cell
    layer: str

    @property
    def label(self) -> str:
        return f"sensitivity scan of layer {self.layer}"

    def context_key(self) -> tuple:
        return self.cell.context_key()


def _targets(cell: Cell, ctx: Context) -> tuple[Any, dict]:

    dense = ctx.dense_copy()
    return dense, select_targets(dense, cell.include or None, cell.exclude or None, cell.prune_last)


def scan_jobs(cell: Cell, ctx: Context) -> list[ScanJob]:
    """One job per prunable layer, in the model's layer order."""
    return [ScanJob(cell, name) for name in _targets(cell, ctx)[1]]


def run_scan_job(job: ScanJob, ctx: Context) -> list[dict]:
    """The sensitivity rows (level 0 first) of ``job.layer``, as JSON-able dicts."""

    dense, targets = _targets(job.cell, ctx)
    scores = compute_scores(dense, {job.layer: targets[job.layer]}, "magnitude")
    table = layer_sensitivity(ctx, dense, scores)
    return table.to_dict("records")


def run_item(
    item: Cell | ScanJob, ctx: Context, progress: Progress | None = None
) -> CellResult | list[dict]:
    """What executors call: a cell's result, or a scan job's rows."""
    if isinstance(item, ScanJob):
        if progress is not None:
            progress(item.label, 0, 1)
        rows = run_scan_job(item, ctx)
        if progress is not None:
            progress(item.label, 1, 1)
        return rows
    return run_cell(item, ctx, progress)
