"""One sweep cell -> a result row. :func:`run_cell` reads as the pipeline: prune (structure,
one shot or schedule) → recover (the dense control gets the same budget) → measure (the task's
metrics, the shared footprint, latency when asked) → keep (the model, compactly:
:mod:`prunelab.sweep.snapshot`). Pure given a :class:`Cell` and the shared context, so any
executor runs cells in any order; nothing here asks what kind a task or a structure is."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunelab.decide.sequential import EarlyStop
from prunelab.decide.weightstats import nonzero_histograms
from prunelab.errors import PrunelabError
from prunelab.measure.footprint import footprint, timing
from prunelab.progress import Progress
from prunelab.prune.apply import folded_copy, layer_sparsity
from prunelab.prune.oneshot import prune_once
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.structures import Pruning, Structure, parse_structure
from prunelab.prune.targets import select_targets
from prunelab.recover.distill import recovery_objective
from prunelab.recover.finetune import train
from prunelab.recover.schedules import format_schedule, parse_schedule, run_schedule
from prunelab.sources.hashing import content_key
from prunelab.sweep.ladder import cached_scores
from prunelab.sweep.model_aware import MODEL_AWARE, resolve_allocation
from prunelab.sweep.snapshot import MODEL, snapshot
from prunelab.sweep.spec import LATENCY, DataSpec, Reconstruction, TaskSpec
from prunelab.tasks.base import ORIGINAL_RECORDS, prefixed
from prunelab.training import TrainConfig

if TYPE_CHECKING:
    from prunelab.sweep.context import Context

IDENTITY = ("model", "method", "allocation", "structure", "schedule", "level", "seed")


@dataclass(frozen=True)
class Cell:
    """Everything needed to reproduce one result row: a typed description of how to prune
    (``structure``/``schedule`` None: the dense control, same recovery budget, no pruning)."""

    model: str
    data: DataSpec
    dense: TrainConfig
    method: str  # criterion or reconstruction name, or "dense" for the unpruned control
    allocation: str
    structure: Structure | None
    schedule: Any
    level: float
    seed: int
    finetune: TrainConfig
    metrics: tuple[str, ...] = ()
    calibration_batches: int = 8
    prune_last: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    search_trials: int = 20
    weights: str | None = None
    train_dense: bool | None = None
    task: TaskSpec = TaskSpec()
    source: str = ""  # content hash of the user's code, weights and data files
    folds: int = 0  # k-fold cross-validation (0: the fixed validation split)
    fold: int = -1  # which fold is held out as validation (-1: none)
    tune_fraction: float = 0.0  # validation share that allocations/schedules tune on (0: none)
    early_stop: EarlyStop | None = None  # a searched cell may stop on a slice of validation
    reconstruction: Reconstruction | None = None  # cells that walk the layers: how they re-fit

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (structure and schedule by their spellings): what the store keeps."""
        raw, pruned = {f.name: getattr(self, f.name) for f in fields(self)}, self.structure
        raw["structure"] = str(pruned) if pruned is not None else "-"
        raw["schedule"] = format_schedule(self.schedule) if pruned is not None else "-"
        out = json.loads(json.dumps(raw, default=lambda o: o.__dict__))
        if out["task"].get("loss") is None:  # ids made before a task took a loss stay valid
            out["task"].pop("loss", None)
        if not out["task"].get("options"):  # ... or options
            out["task"].pop("options", None)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Cell:
        """The cell :meth:`to_json` wrote (lists back to tuples, spellings parsed)."""
        kw = dict(raw)
        try:
            kw["data"] = DataSpec(**kw["data"])
            kw["dense"], kw["finetune"] = TrainConfig(**kw["dense"]), TrainConfig(**kw["finetune"])
            kw["task"] = TaskSpec.from_dict(kw.get("task", {}))
            kw["early_stop"] = EarlyStop.from_dict(kw.get("early_stop"))
            kw["reconstruction"] = Reconstruction.from_dict(kw.get("reconstruction"))
            for name in ("metrics", "include", "exclude"):
                kw[name] = tuple(kw.get(name, ()))
            pruned = kw["structure"] != "-"
            kw["structure"] = parse_structure(kw["structure"]) if pruned else None
            kw["schedule"] = parse_schedule(kw["schedule"]) if pruned else None
            return cls(**kw)
        except (KeyError, TypeError) as e:
            raise PrunelabError(f"stored cell unreadable by this prunelab version: {e}") from None

    @property
    def cell_id(self) -> str:
        ident = self.to_json()  # identity(): ids made before lr schedules existed stay valid
        ident.update(dense=self.dense.identity(), finetune=self.finetune.identity())
        for name in ("tune_fraction", "early_stop", "reconstruction"):  # ids before these stay
            if not getattr(self, name):
                del ident[name]
        return content_key(ident, 20)

    @property
    def label(self) -> str:
        if self.structure is None:
            return f"dense seed={self.seed}"
        how = f"{self.method}/{self.allocation}/{self.structure}/{format_schedule(self.schedule)}"
        return f"{how} @{self.level:g} seed={self.seed}"

    def context_key(self) -> tuple:
        return (self.model, self.data, self.dense, self.weights, self.train_dense, self.task,
                self.source, self.folds, self.fold, self.tune_fraction)  # fmt: skip

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this cell prunes (its structure may keep the output layer)."""
        last = self.prune_last and (self.structure is None or self.structure.prunes_last)
        return select_targets(model, self.include or None, self.exclude or None, last)


@dataclass(frozen=True)
class CellResult:
    row: dict[str, Any]
    artifacts: dict[str, np.ndarray]
    duration_s: float
    records: dict[str, Any] = field(default_factory=dict)  # run-level JSON (store meta)
    model: nn.Module | None = None  # the pruned (and fine-tuned) model, when asked for


def run_cell(
    cell: Cell, ctx: Context, progress: Progress | None = None, keep_model: bool = False
) -> CellResult:
    """Prune (per the cell's schedule), recover, and measure one cell.

    ``keep_model=True`` also returns the model (for export). Dense scores are memoised per
    (method, seed) in ``ctx.memo`` (:mod:`prunelab.sweep.ladder`), which changes no result.
    """
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    gen = torch.Generator().manual_seed(cell.seed)
    model = ctx.dense_copy()
    row: dict[str, Any] = {k: v for k, v in cell.to_json().items() if k in IDENTITY}
    row.update(dataset=cell.data.name, ft_epochs=cell.finetune.epochs)
    row.update({"fold": cell.fold, "folds": cell.folds} if cell.fold >= 0 else {})
    if cell.reconstruction is not None:  # what the layer walk added (the [reconstruction] table)
        row["reconstruction"] = cell.reconstruction.config().describe()
    on_step = (lambda s, t: progress("fine-tune", s, t)) if progress else None
    records: dict[str, Any] = {}
    if cell.structure is not None and cell.schedule.name != "oneshot":
        records, trajectory = _scheduled(cell, ctx, model, gen, on_step)
        row["trajectory"] = json.dumps(trajectory)
    else:
        if cell.structure is not None:
            t0 = time.perf_counter()
            records = _prune(cell, ctx, model, gen, progress)
            row["prune_s"] = time.perf_counter() - t0  # scoring, calibration, reconstruction
            if cell.finetune.epochs > 0:  # before recovery: the cheap metrics only
                quick = ctx.task.quick(model, ctx.data, ctx.refs)
                row.update({f"oneshot_{k}": v for k, v in quick.items()})
        if cell.finetune.epochs > 0:
            objective = recovery_objective(ctx.task, ctx.dense, cell.finetune)
            train(model, ctx.data.train, cell.finetune, gen, on_step=on_step, task=objective)
    artifacts = _measure(cell, ctx, model, row)
    artifacts[MODEL] = snapshot(model, ctx.dense, cell.structure, ctx.example)
    kept = model if keep_model else None
    return CellResult(row, artifacts, time.perf_counter() - start, records, kept)


def _measure(cell: Cell, ctx: Context, model: nn.Module, row: dict[str, Any]) -> dict:
    """The task's columns, the footprint, latency when asked; per-cell arrays for the report."""
    early: dict[str, Any] = {}  # rows scored, and why it stopped (cells that may stop early)
    task_row, artifacts = ctx.task.measure(model, ctx.data, ctx.refs, cell.metrics,
                                           ctx.val_scorer(cell, early))  # fmt: skip
    row.update(task_row, **early)
    if cell.structure is None:  # the model as given, on the same validation rows: a reference
        artifacts.update(prefixed(ctx.original_records, ORIGINAL_RECORDS))
    if ctx.tuning is not None:  # the validation rows the decision never reads
        row["tune_rows"] = len(ctx.tuning.val)
    st, ex = cell.structure, ctx.example
    shipped = st.shipped(model, ex) if st is not None else folded_copy(model)
    row.update(footprint(model, ctx.dense, st, cell.targets(model).values(), ex, shipped))
    if LATENCY in cell.metrics:
        batches = ctx.task.latency_batches
        row.update(timing(shipped, ctx.dense, ctx.task.example_input(ctx.data.test, max(batches)),
                          batches))  # fmt: skip
    row["layer_sparsity"] = json.dumps(layer_sparsity(model))
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB: peak
    return {**artifacts, **{f"weight_hist/{n}": h.to_array()
                            for n, h in nonzero_histograms(model).items()}}  # fmt: skip


def _prune(
    cell: Cell, ctx: Context, model: nn.Module, gen: torch.Generator, progress: Progress | None
) -> dict[str, Any]:
    """One-shot pruning through the structure; returns run-level records (searches, scans)."""
    targets, records, calib = cell.targets(model), {}, []

    def scores() -> dict[str, torch.Tensor]:
        batches, s = cached_scores(cell, ctx.memo, model, targets, ctx.data.train, gen, ctx.task)
        calib[:] = batches
        return s

    def allocation(scores: dict[str, torch.Tensor]) -> Any:
        alloc, rec = resolve_allocation(cell, ctx, model, targets, scores, calib, gen)
        records.update(rec)
        return alloc

    def batches(size: int) -> list[Any]:
        return list(islice(ctx.task.batches(ctx.data.train, size, gen), cell.calibration_batches))

    phase = cell.structure.progress_phase
    on_layer = (lambda done, total, _: progress(phase, done, total)) if progress else None
    job = Pruning(cell.level, cell.method, targets, scores, allocation, cell.allocation, batches,
                  ctx.task.inputs, ctx.example, gen, on_layer,
                  sequential=ctx.task.sequential_calibration,
                  walk=cell.reconstruction.config() if cell.reconstruction else None)  # fmt: skip
    prune_once(model, cell.structure, job)
    return records


def _scheduled(
    cell: Cell, ctx: Context, model: nn.Module, gen: torch.Generator, on_step: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Iterative, gradual, regrow or adaptive pruning within the cell's fine-tune budget."""
    st = cell.structure
    if cell.method in RECONSTRUCTORS or not st.schedulable:
        raise PrunelabError(f"{cell.method}/{st} runs one-shot only (schedule oneshot)")
    if not ctx.task.supports_schedules:
        raise PrunelabError(f"schedule '{format_schedule(cell.schedule)}' supports "
                            f"classification tasks only; use oneshot for a {ctx.task.kind} task")
    allocation, records = cell.allocation, {}
    if cell.allocation in MODEL_AWARE:  # resolved once, from the dense model's scores
        targets = cell.targets(model)
        calib, scores = cached_scores(cell, ctx.memo, model, targets, ctx.data.train, gen, ctx.task)
        allocation, records = resolve_allocation(cell, ctx, model, targets, scores, calib, gen)
    res = run_schedule(  # an adaptive schedule tunes on the tuning slice, never the decision's
        cell.schedule, model, ctx.tuning_data(), cell.level, method=cell.method,
        allocation=allocation, train_cfg=cell.finetune, generator=gen,
        reference_logits=ctx.tuning_refs(), structure=st, include=cell.include or None,
        exclude=cell.exclude or None, prune_last=cell.prune_last and st.prunes_last,
        calibration_batches=cell.calibration_batches, on_step=on_step,
    )  # fmt: skip
    st.finish(model, ctx.example)  # schedules re-mask along the way: silence what is gone
    return records, res.trajectory
