"""One sweep cell: (method, allocation, structure, schedule, level, seed) -> a result row.

:func:`run_cell` is pure given its inputs (a :class:`Cell` and the shared :class:`Context`),
so any executor — sequential, process pool, Ray — can run cells in any order.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.decide.weightstats import nonzero_histograms
from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import DEFAULT_METRICS
from prunelab.measure.metrics.efficiency import compare_latency
from prunelab.measure.metrics.latency import LARGE_BATCH, LATENCY_METRICS
from prunelab.measure.metrics.robustness import RobustnessSuite, reference_context
from prunelab.measure.metrics.size import size_counts
from prunelab.nlp.heads import prune_heads_ffn
from prunelab.prune.allocation import ALLOCATIONS
from prunelab.prune.apply import apply_masks, folded_copy, get_masks, layer_sparsity
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import level_reached, select_masks
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structure import NM, Channels, Heads, parse_structure
from prunelab.prune.surgery.channel_plan import plan_from_masks
from prunelab.prune.surgery.exits import silence_removed_channels
from prunelab.prune.surgery.slim import slim
from prunelab.prune.targets import select_targets
from prunelab.recover.finetune import StepCallback, TrainConfig, train
from prunelab.recover.schedules import canonical_schedule, parse_schedule, run_schedule
from prunelab.sources import resolve
from prunelab.sources.data import DataBundle
from prunelab.sources.data.base import kfold_bundle
from prunelab.sweep.ladder import cached_scores
from prunelab.sweep.model_aware import MODEL_AWARE, resolve_allocation
from prunelab.sweep.spec import DataSpec, SweepSpec, TaskSpec
from prunelab.tasks import TASKS, ClassificationTask, Task, make_task

Progress = Callable[[str, int, int], None]  # (phase, done, total)
TRAIN_EVAL_SIZE = 5000  # train rows evaluated for the overfitting gap
VAL_METRICS = ("accuracy", "loss", "agreement", "kl")
PRESERVATION = ("ece", "brier", "worst_class_drop", "robustness_gap")
EFFICIENCY = ("sparse_macs", "sparse_bytes")
ROBUSTNESS_EXAMPLES = 1000


@dataclass(frozen=True)
class Cell:
    """Everything needed to reproduce one result row."""

    model: str
    data: DataSpec
    dense: TrainConfig
    method: str  # criterion name, or "dense" for the unpruned control
    allocation: str
    structure: str
    schedule: str
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
    folds: int = 0  # k-fold cross-validation over train+val (0: the fixed validation split)
    fold: int = -1  # which fold is held out as validation (-1: none)

    @property
    def cell_id(self) -> str:
        fields = {  # identity(): ids made before lr schedules existed stay valid
            **dataclasses.asdict(self),
            "dense": self.dense.identity(),
            "finetune": self.finetune.identity(),
        }
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        if self.method == "dense":
            return f"dense seed={self.seed}"
        return (
            f"{self.method}/{self.allocation}/{self.structure}/{self.schedule} "
            f"@{self.level:g} seed={self.seed}"
        )

    def context_key(self) -> tuple:
        return (
            self.model,
            self.data,
            self.dense,
            self.weights,
            self.train_dense,
            self.task,
            self.source,
            self.folds,
            self.fold,
        )


def expand_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of a sweep, dense controls first; N:M structures get their one fixed level."""
    common = {
        "model": spec.model,
        "data": spec.data,
        "dense": spec.dense,
        "finetune": spec.finetune,
        "metrics": spec.metrics,
        "calibration_batches": spec.calibration_batches,
        "prune_last": spec.prune_last,
        "include": spec.include or TASKS.get(spec.task.kind).default_include,
        "exclude": spec.exclude,
        "search_trials": spec.search_trials,
        "weights": spec.weights,
        "train_dense": spec.train_dense,
        "task": spec.task,
        "source": source_hash(spec),
    }
    cells = [
        Cell(
            method="dense",
            allocation="-",
            structure="-",
            schedule="-",
            level=0.0,
            seed=seed,
            **common,
        )
        for seed in spec.seeds
    ]
    for structure in spec.structures:
        st = parse_structure(structure)
        levels = (round(st.sparsity, 10),) if isinstance(st, NM) else spec.levels
        for schedule in dict.fromkeys(canonical_schedule(s) for s in spec.schedules):
            for method in spec.methods:
                for allocation in spec.allocations:
                    if isinstance(st, NM) and allocation != spec.allocations[0]:
                        continue  # N:M ignores the allocation: one cell, not one per allocation
                    for level in levels:
                        for seed in spec.seeds:
                            cells.append(
                                Cell(
                                    method=method,
                                    allocation=allocation,
                                    structure=structure,
                                    schedule=schedule,
                                    level=level,
                                    seed=seed,
                                    **common,
                                )
                            )
    if spec.folds:  # every cell once per fold: replicates are folds x seeds
        cells = [
            dataclasses.replace(c, folds=spec.folds, fold=f)
            for c in cells
            for f in range(spec.folds)
        ]
    return cells


@dataclass
class Context:
    """What all cells of a sweep share: data, the task, the dense model and its outputs."""

    data: Any  # a DataBundle for classification; the task kind's own bundle otherwise
    dense: nn.Module  # the dense model every cell starts from (copied, never changed)
    reference: dict[str, Any]  # split -> the dense model's outputs (logits for classification)
    train_eval: Any = None
    dense_metrics: dict[str, float] = field(default_factory=dict)  # the model as given
    robustness: dict[str, Any] = field(default_factory=dict)  # the dense model's profile
    memo: dict[tuple, Any] = field(default_factory=dict)  # per-process, e.g. sensitivity tables
    task: Task = field(default_factory=ClassificationTask)
    data_hash: str = ""  # fingerprint of the data as given (checked when a sweep resumes)

    @classmethod
    def build(
        cls, cell: Cell, cache_dir: Any = None, on_step: StepCallback | None = None
    ) -> Context:
        """Data, task and dense model of ``cell``'s sweep; ``on_step(step, total)`` follows a
        dense training when one is needed (not cached)."""
        data = resolve.load_bundle(
            cell.data.name,
            cell.data.loader,
            cell.data.reader,
            cell.data.path,
            **cell.data.loader_kwargs(),
        )
        task = task_of(cell, data)
        classify = isinstance(task, ClassificationTask)
        if classify and not isinstance(data, DataBundle):
            raise PrunelabError(
                f"a {task.kind} task needs labelled (x, y) data; dataset '{cell.data.name}' "
                f"gives {type(data).__name__} (set [task] kind)"
            )
        check = None
        if classify:
            check = partial(task.check_model, split=data.test, num_classes=data.num_classes)
        dense = resolve.dense_model(
            cell.model,
            cell.weights,
            data,
            cell.dense,
            cell.train_dense,
            task,
            cache_dir,
            seed=cell.data.seed,
            check=check,
            on_step=on_step,
        ).eval()
        if not select_targets(dense, cell.include or None, cell.exclude or None, cell.prune_last):
            raise PrunelabError(
                f"model '{cell.model}' has nothing to prune: no Linear or Conv weights "
                "(check include/exclude)"
            )
        task = task.with_dense(dense)
        data_hash = data.fingerprint()  # of the data as given (before any fold split)
        if cell.fold >= 0:  # the dense model is the same for every fold; the splits are not
            if not isinstance(data, DataBundle):
                raise PrunelabError(f"folds need (x, y) data; a {task.kind} task has none")
            data = kfold_bundle(data, cell.folds, cell.fold, cell.data.seed)
        if not classify:
            reference = {s: task.predict(dense, getattr(data, s)) for s in ("test", "val")}
            metrics = task.evaluate(dense, data.test, reference["test"], reference["test"])
            metrics.update(size_counts(dense))
            return cls(data, dense, reference, None, metrics, {}, task=task, data_hash=data_hash)
        train_eval = data.train.subset(TRAIN_EVAL_SIZE)
        reference = {
            "test": task.predict(dense, data.test),
            "val": task.predict(dense, data.val),
            "train": task.predict(dense, train_eval),
        }
        task.check_outputs(reference["test"], data.test)
        robust = (
            reference_context(dense, data.test, RobustnessSuite(max_examples=ROBUSTNESS_EXAMPLES))
            if data.test.x.dim() == 4
            else {}
        )
        metrics = task.evaluate(dense, data.test, reference["test"], reference["test"])
        return cls(
            data, dense, reference, train_eval, metrics, robust, task=task, data_hash=data_hash
        )

    def dense_model(self, cell: Cell) -> nn.Module:
        """A fresh copy of the dense model (each cell prunes its own)."""
        return copy.deepcopy(self.dense)


def task_of(cell: Cell, data: Any = None) -> Task:
    """The cell's task object (custom metrics loaded from their import paths)."""
    t = cell.task
    custom = tuple((c.name, c.path, c.higher_is_better) for c in t.custom)
    return make_task(t.kind, t.primary, custom, data)


def source_hash(spec: SweepSpec) -> str:
    """One hash of the user's code, weights and data-loader files ('' for built-ins only)."""
    prints = resolve.fingerprint(
        spec.model, spec.weights, spec.data.loader, tuple(c.path for c in spec.task.custom)
    )
    if not prints:
        return ""
    return hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()[:16]


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
    """Prune (per the cell's schedule), fine-tune, and measure one cell.

    ``keep_model=True`` also returns the model (for export). Scores of the dense model are
    memoised per (method, seed) in ``ctx.memo`` (see :mod:`prunelab.sweep.ladder`), which
    changes no result.
    """
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    gen = torch.Generator().manual_seed(cell.seed)
    task = ctx.task
    classify = isinstance(task, ClassificationTask)
    model = ctx.dense_model(cell)
    row: dict[str, Any] = {
        k: v
        for k, v in dataclasses.asdict(cell).items()
        if k in ("model", "method", "allocation", "structure", "schedule", "level", "seed")
    }
    row.update(dataset=cell.data.name, ft_epochs=cell.finetune.epochs)
    if cell.fold >= 0:
        row.update(fold=cell.fold, folds=cell.folds)
    records: dict[str, Any] = {}
    on_step = (lambda s, t: progress("fine-tune", s, t)) if progress else None
    if cell.method != "dense" and cell.schedule != "oneshot":
        if cell.method in RECONSTRUCTORS or isinstance(parse_structure(cell.structure), Heads):
            raise PrunelabError(
                f"{cell.method}/{cell.structure} runs one-shot only (schedule oneshot)"
            )
        if not classify:
            raise PrunelabError(
                f"schedule '{cell.schedule}' supports classification tasks only; use oneshot "
                f"for a {task.kind} task"
            )
        records, trajectory = _scheduled(cell, ctx, model, gen, on_step)
        row["trajectory"] = json.dumps(trajectory)
    else:
        if cell.method != "dense":
            t0 = time.perf_counter()
            records = _prune(cell, ctx, model, gen, progress)
            row["prune_s"] = time.perf_counter() - t0  # scoring, calibration, reconstruction
            if cell.finetune.epochs > 0:  # before fine-tuning: the cheap metrics only
                pre = _cheap_metrics(ctx, model)
                row.update({f"oneshot_{k}": v for k, v in pre.items()})
        if cell.finetune.epochs > 0:
            train(model, ctx.data.train, cell.finetune, gen, on_step=on_step, task=task)
    scheduled = cell.method != "dense" and cell.schedule != "oneshot"
    if scheduled and isinstance(parse_structure(cell.structure), Channels):
        # one-shot cells were silenced when pruned (_prune); schedules re-mask along the way
        silence_removed_channels(model, task.example_input(ctx.data.test))
    measure = _measure_classification if classify else _measure_task
    artifacts = measure(cell, ctx, model, row)
    row["layer_sparsity"] = json.dumps(layer_sparsity(model))
    if cell.method != "dense":  # what the cell reached, in level units (adaptive may stop short)
        row["achieved_level"] = level_reached(get_masks(model), parse_structure(cell.structure))
    # peak resident memory of this process so far (Linux reports KiB): the bound a run needs
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hists = {f"weight_hist/{n}": h.to_array() for n, h in nonzero_histograms(model).items()}
    artifacts = {**artifacts, **hists}
    return CellResult(
        row, artifacts, time.perf_counter() - start, records, model if keep_model else None
    )


def _cheap_metrics(ctx: Context, model: nn.Module) -> dict[str, float]:
    """The task/fidelity metrics of the one-shot model, before fine-tuning."""
    if isinstance(ctx.task, ClassificationTask):
        return ctx.task.evaluate(model, ctx.data.test, ctx.reference["test"], names=DEFAULT_METRICS)
    return ctx.task.evaluate(model, ctx.data.test, ctx.reference["test"])


def _measure_classification(
    cell: Cell, ctx: Context, model: nn.Module, row: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Test metrics (with preservation and efficiency), validation and train metrics, PIEs."""
    task = ctx.task
    assert isinstance(task, ClassificationTask)
    preservation = PRESERVATION if ctx.robustness else PRESERVATION[:-1]
    custom = tuple(c.name for c in task.custom)
    test_metrics = tuple(
        dict.fromkeys(
            DEFAULT_METRICS + ("params",) + preservation + EFFICIENCY + cell.metrics + custom
        )
    )
    logits = task.predict(model, ctx.data.test)  # (N, K), shared by the metrics and test_preds
    row.update(
        task.evaluate(
            model, ctx.data.test, ctx.reference["test"], logits, test_metrics, ctx.robustness
        )
    )
    val_names = tuple(dict.fromkeys(VAL_METRICS + (task.primary,)))
    val = task.evaluate(model, ctx.data.val, ctx.reference["val"], names=val_names)
    row.update({f"val_{k}": v for k, v in val.items()})
    tr = task.evaluate(model, ctx.train_eval, ctx.reference["train"], names=("accuracy", "loss"))
    row.update({f"train_{k}": v for k, v in tr.items()})
    if _is_channels(cell) and LATENCY_METRICS[0] in test_metrics:
        row.update(_latency(ctx, model, True, (1, LARGE_BATCH)))  # time the slim copy
    return {"test_preds": logits.argmax(1).to(torch.int16).numpy()}


def _measure_task(
    cell: Cell, ctx: Context, model: nn.Module, row: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Any other task: its own metrics on test, and on validation as ``val_*``."""
    task = ctx.task
    outputs = task.predict(model, ctx.data.test)
    row.update(task.evaluate(model, ctx.data.test, ctx.reference["test"], outputs))
    val = task.evaluate(model, ctx.data.val, ctx.reference["val"])
    row.update({f"val_{k}": v for k, v in val.items()})
    targets = select_targets(model, cell.include or None, cell.exclude or None, cell.prune_last)
    row.update(size_counts(model, targets.values()))  # sparsity over the prunable layers
    if LATENCY_METRICS[0] in cell.metrics:  # real time is decided at batch 1
        row.update(_latency(ctx, model, _is_channels(cell), (1,)))
    return task.artifacts(model, ctx.data.test, outputs)


def _is_channels(cell: Cell) -> bool:
    return cell.method != "dense" and isinstance(parse_structure(cell.structure), Channels)


def _latency(
    ctx: Context, model: nn.Module, channels: bool, batches: tuple[int, ...]
) -> dict[str, float]:
    """Measured latency of what would ship: the slimmed copy for channel cells, the
    mask-folded model otherwise (median ms per batch size, frames per second at batch 1)."""
    example = ctx.task.example_input(ctx.data.test)[:1]
    timed = slim(model, example, get_masks(model)) if channels else folded_copy(model)
    lat = compare_latency({"m": timed}, example, batches)["m"]
    out = {f"latency_b{b}_ms": lat[b].median_ms for b in batches}
    out.update(fps_b1=1000.0 / lat[1].median_ms, latency_threads=float(lat[1].threads))
    return out


def _allocation(cell: Cell, ctx: Context, model: nn.Module, gen: torch.Generator):
    """Targets, scores of the (dense) model, and the cell's resolved allocation."""
    structure = parse_structure(cell.structure)
    prune_last = cell.prune_last and not isinstance(structure, Channels)
    targets = select_targets(model, cell.include or None, cell.exclude or None, prune_last)
    calib, scores = cached_scores(cell, ctx.memo, model, targets, ctx.data.train, gen, ctx.task)
    allocation, records = resolve_allocation(cell, ctx, model, targets, scores, calib, gen)
    return structure, scores, allocation, records


def _reconstruct(
    cell: Cell, ctx: Context, model: nn.Module, gen: torch.Generator, progress: Progress | None
) -> None:
    """SparseGPT-style: prune layer after layer, updating the kept weights (no score cache).

    Per-layer fractions come from the cell's allocation over the dense model's magnitudes
    (``uniform``: the level everywhere); calibration inputs pass through the pruned layers.
    """
    structure = parse_structure(cell.structure)
    if isinstance(structure, Channels):
        raise PrunelabError(f"method '{cell.method}' prunes weights, not channels")
    targets = select_targets(model, cell.include or None, cell.exclude or None, cell.prune_last)
    batches = ctx.task.batches(ctx.data.train, 128, gen)
    calib = [ctx.task.inputs(b) for b in islice(batches, cell.calibration_batches)]
    sparsity: float | dict[str, float] = cell.level
    if cell.allocation not in ("uniform", "row") and not isinstance(structure, NM):
        scores = compute_scores(model, targets, "magnitude", gen)
        counts = ALLOCATIONS.get(cell.allocation)(scores, cell.level)
        sparsity = {n: counts[n] / scores[n].numel() for n in targets}
    on_layer = (
        (lambda done, total, name: progress("prune layers", done, total)) if progress else None
    )
    prune_sequential(
        model, targets, calib, cell.method, sparsity, structure, generator=gen, progress=on_layer
    )


def _prune(
    cell: Cell,
    ctx: Context,
    model: nn.Module,
    gen: torch.Generator,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One-shot: score, allocate and mask ``model`` in place; returns run-level records."""
    if cell.method in RECONSTRUCTORS:
        _reconstruct(cell, ctx, model, gen, progress)
        return {}
    if isinstance(st := parse_structure(cell.structure), Heads):  # physical heads (+FFN)
        calib = list(islice(ctx.task.batches(ctx.data.train, 32, gen), cell.calibration_batches))
        prune_heads_ffn(model, cell.level, cell.method, calib, gen, ffn=st.ffn)
        return {}
    structure, scores, allocation, records = _allocation(cell, ctx, model, gen)
    masks = select_masks(scores, cell.level, allocation, structure)
    example = ctx.task.example_input(ctx.data.test)
    if isinstance(structure, Channels):  # the channels must be physically removable: say now
        # masks as the slim copy will be: coupled channels and those reaching an output kept
        masks = {**masks, **plan_from_masks(model, example, masks).masks(model)}
    apply_masks(model, masks)
    if isinstance(structure, Channels):  # the masked model computes what its slim copy will
        silence_removed_channels(model, example)
    return records


def _scheduled(
    cell: Cell, ctx: Context, model: nn.Module, gen: torch.Generator, on_step
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Iterative, gradual, regrow or adaptive pruning within the cell's fine-tune budget."""
    allocation: Any = cell.allocation
    records: dict[str, Any] = {}
    if cell.allocation in MODEL_AWARE:  # resolved once, from the dense model's scores
        _, _, allocation, records = _allocation(cell, ctx, model, gen)
    res = run_schedule(
        parse_schedule(cell.schedule),
        model,
        ctx.data,
        cell.level,
        method=cell.method,
        allocation=allocation,
        train_cfg=cell.finetune,
        generator=gen,
        reference_logits=ctx.reference["val"],
        structure=parse_structure(cell.structure),
        include=cell.include or None,
        exclude=cell.exclude or None,
        prune_last=cell.prune_last,
        calibration_batches=cell.calibration_batches,
        on_step=on_step,
    )
    return records, res.trajectory
