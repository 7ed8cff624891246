"""What the cells of one sweep share, built once per process: data, task, dense model, references.

:meth:`Context.build` loads the data (sources), makes the task for it, gets the dense model
(sources; trained and cached by recover when prunelab trains it), computes the dense model's
outputs every cell is compared with (the task's references) and its own metrics as given.
:class:`ContextCache` keeps one context per sweep and process, for every executor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.device import Placement, to_device
from prunelab.errors import PrunelabError
from prunelab.measure.footprint import footprint
from prunelab.measure.resampled import slice_rows, take_records
from prunelab.prune.targets import select_targets
from prunelab.recover.dense import trained
from prunelab.sources import resolve
from prunelab.sweep.cell import Cell
from prunelab.tasks import Task, make_task
from prunelab.tasks.base import Scorer
from prunelab.training import StepCallback


@dataclass
class Context:
    """What all cells of a sweep share: data, the task, the dense model and its outputs."""

    data: Any  # the task kind's bundle (train/val/test splits; val: the rows the decision reads)
    dense: nn.Module  # the dense model every cell starts from (copied, never changed)
    task: Task
    refs: dict[str, Any]  # the task's references: the dense model's outputs per split, ...
    example: Any  # one input row of the task's dtype (tracing, MAC counts)
    dense_metrics: dict[str, float] = field(default_factory=dict)  # see measure_original
    memo: dict[tuple, Any] = field(default_factory=dict)  # per-process: scores, scans
    data_hash: str = ""  # fingerprint of the data as given (checked when a sweep resumes)
    device: torch.device = torch.device("cpu")  # where the model, data and references live
    original_records: dict[str, Any] = field(default_factory=dict)  # the model as given, on val
    tuning: Any = None  # the bundle whose val is the tuning slice (None: nothing tunes)

    @classmethod
    def build(
        cls,
        cell: Cell,
        cache_dir: Path | None = None,
        on_step: StepCallback | None = None,
        where: Placement | None = None,
    ) -> Context:
        """Data, task and dense model of ``cell``'s sweep, on ``where``'s device and in its
        dtype (the CPU and the model's own by default); ``on_step(step, total)`` follows a
        dense training when one is needed (not cached).

        Cross-validation: see :func:`load_dense`. A tuning slice (``cell.tune_fraction``) is
        then cut from the validation rows: allocations and schedules tune on it, every cell is
        measured on the rest.
        """
        where = where or Placement()
        device = where.device
        base = load_dense(cell, cache_dir, on_step, device)
        data, data_hash = base.data, base.data_hash
        example = base.task.example_input(data.test)
        dense = _in_dtype(base.model, where.dtype, example)
        task = base.task.with_dense(dense)
        targets = select_targets(dense, cell.include or None, cell.exclude or None, cell.prune_last)
        if not targets:
            raise PrunelabError(
                f"model '{cell.model}' has nothing to prune: no Linear or Conv weights "
                "(check include/exclude)"
            )
        tuning = None
        if cell.tune_fraction > 0:
            tuning, data = task.split_val(data, cell.tune_fraction, cell.data.seed)
        refs = task.references(dense, data)
        _, original = task.scored(dense, data.val, refs["val"])  # the model as given, per row
        return cls(data, dense, task, refs, example, data_hash=data_hash, device=device,
                   original_records=original, tuning=tuning)  # fmt: skip

    def tuning_data(self) -> Any:
        """The bundle allocations and schedules tune on: its val is the tuning slice when the
        sweep cut one, else the validation split itself."""
        return self.data if self.tuning is None else self.tuning

    def tuning_refs(self) -> Any:
        """The dense model's outputs on :meth:`tuning_data`'s validation rows (memoised)."""
        if self.tuning is None:
            return self.refs["val"]
        if ("tuning_refs",) not in self.memo:
            self.memo[("tuning_refs",)] = self.task.predict(self.dense, self.tuning.val)
        return self.memo[("tuning_refs",)]

    def val_scorer(self, cell: Cell, info: dict[str, Any]) -> Scorer | None:
        """How ``cell`` scores the validation split when it may stop early
        (``cell.early_stop``, :mod:`prunelab.decide.sequential`): in growing slices of its rows,
        each slice judged against the original model's records on the same rows, until one
        decides. Each row is predicted once (a slice adds the rows it lacks; kinds that score
        in one pass of their own rescore each slice). ``info`` gets ``val_rows`` (rows scored)
        and ``val_stop`` (the verdict that stopped it; "" when every row was scored). None: the
        task's own scoring of every row."""
        stop = cell.early_stop
        stat = self.task.statistic(stop.metric) if stop is not None else None
        if stop is None or stat is None or not self.original_records:
            return None
        sign, task = self.task.info(stop.metric).sign, self.task

        def scored(model: nn.Module, split: Any, reference: Any) -> tuple[dict, dict]:
            n, parts, seen = len(split), [], np.zeros(0, dtype=np.int64)
            for m in stop.sizes(n):
                rows = slice_rows(n, m)
                part = split if m == n else task.take(split, torch.as_tensor(rows))
                ref = reference if m == n else self._slice_reference(reference, part, rows)
                if task.sliceable_outputs:  # predict the rows this slice adds, join the rest
                    new = np.setdiff1d(rows, seen)
                    parts.append(task.predict(model, task.take(split, torch.as_tensor(new))))
                    seen = np.concatenate([seen, new])
                    done = task.scored_from(model, part, ref, task.join_outputs(parts, seen))
                else:
                    done = task.scored(model, part, ref)
                verdict = ""
                if m < n:
                    verdict = stop.verdict(stat, sign, done[1],
                                           take_records(self.original_records, rows))  # fmt: skip
                if m == n or verdict != "undecided":
                    info.update(val_rows=m, val_stop=verdict)
                    return done
            raise AssertionError("the last look scores every row")

        return scored

    def _slice_reference(self, reference: Any, part: Any, rows: np.ndarray) -> Any:
        """The dense model's outputs on validation ``rows``: taken from ``reference`` when they
        are per-row (a tensor or a list), else predicted once per process."""
        if isinstance(reference, torch.Tensor):
            return reference[torch.as_tensor(rows, device=reference.device)]
        if isinstance(reference, list):
            return [reference[i] for i in rows]
        key = ("slice_reference", id(reference), len(rows))
        if key not in self.memo:
            self.memo[key] = self.task.predict(self.dense, part)
        return self.memo[key]

    def dense_copy(self) -> nn.Module:
        """A fresh copy of the dense model (each cell prunes its own)."""
        return copy.deepcopy(self.dense)

    def measure_original(self, cell: Cell) -> dict[str, float]:
        """The model as given, measured as a cell is (the task's test, ``val_`` and ``train_``
        columns, the footprint), so every curve of the report can show it; memoised in
        ``dense_metrics``. Only the driver asks, once per run, so workers never pay for it."""
        if not self.dense_metrics:
            dense = self.dense
            row, _ = self.task.measure(dense, self.data, self.refs, cell.metrics)
            targets = select_targets(dense, cell.include or None, cell.exclude or None,
                                     cell.prune_last)  # fmt: skip
            row.update(footprint(dense, dense, None, targets.values(), self.example, dense))
            self.dense_metrics = row
        return self.dense_metrics


def _in_dtype(model: nn.Module, dtype: torch.dtype | None, example: Any) -> nn.Module:
    """``model`` cast to ``dtype`` (trained in its own); only a model that reads token ids
    can be, since float inputs would no longer match its weights."""
    if dtype is None:
        return model
    if example.is_floating_point():
        raise PrunelabError(
            f"dtype {str(dtype).removeprefix('torch.')} is for models that read token ids "
            f"(language models); this model reads {str(example.dtype).removeprefix('torch.')} "
            "inputs: drop --dtype"
        )
    return model.to(dtype)


@dataclass(frozen=True)
class Dense:
    """A sweep's data, its task (knowing the dense model) and the dense model, in eval mode:
    what exporting a stored cell needs (no references, nothing measured)."""

    data: Any
    task: Task
    model: nn.Module
    data_hash: str = ""  # fingerprint of the data as given

    def example(self, n: int = 1) -> Any:
        """The first ``n`` test inputs, of the task's dtype."""
        return self.task.example_input(self.data.test, n)


def load_dense(
    cell: Cell,
    cache_dir: Path | None = None,
    on_step: StepCallback | None = None,
    device: torch.device | None = None,
) -> Dense:
    """The data, task and dense model of ``cell``'s sweep on ``device`` (the CPU by default;
    the dense model trained there, or read from its cache, when prunelab trains it).

    Cross-validation: a dense model prunelab trains is trained once per fold, on that fold's
    training rows (train and validation pooled, the fold held out); a pretrained one keeps its
    training rows, and the folds cut the validation rows only."""
    d = cell.data
    data = resolve.load_bundle(d.name, d.loader, d.reader, d.path, d.loader_kwargs(),
                               cell.model)  # fmt: skip
    task = task_of(cell, data)
    src = resolve.dense_source(cell.model, cell.weights, data, cell.train_dense, task, d.seed)
    data_hash = data.fingerprint()  # of the data as given, on the CPU (before any fold split)
    if cell.fold >= 0:  # prunelab's dense model trains on the fold's rows: pooled folds
        data = task.fold(data, cell.folds, cell.fold, d.seed, pooled=src.cache is not None)
    device = device or torch.device("cpu")
    data = to_device(data, device)  # every batch is then sliced on the device
    dense = src.module.to(device)
    if src.cache is not None:
        name, key = src.cache
        key = {**key, "cfg": cell.dense.identity(), "seed": d.seed}
        if cell.fold >= 0:
            key["fold"] = f"{cell.fold}/{cell.folds}"
        dense = trained(dense, name, key, data, cell.dense, cache_dir, d.seed, task, on_step)
    dense = dense.eval()
    return Dense(data, task.with_dense(dense), dense, data_hash)


def task_of(cell: Cell, data: Any = None) -> Task:
    """The cell's task object (custom metrics loaded from their import paths)."""
    t = cell.task
    custom = tuple((c.name, c.path, c.higher_is_better) for c in t.custom)
    return make_task(t.kind, t.primary, custom, data, t.loss, dict(t.options))


class ContextCache:
    """Contexts built at most once per process and sweep (data, dense model, dense outputs)."""

    def __init__(
        self,
        cache_dir: Path | None,
        on_step: StepCallback | None = None,
        where: Placement | None = None,
    ) -> None:
        self.cache_dir, self.on_step = cache_dir, on_step  # on_step: dense training progress
        self.where = where or Placement()  # every context's device and dtype
        self._items: dict[tuple, Context] = {}

    def get(self, item: Any) -> Context:
        """The context of a cell or of anything with ``context_key()`` and ``cell``."""
        key = item.context_key()
        if key not in self._items:
            cell = item if isinstance(item, Cell) else item.cell
            self._items[key] = Context.build(cell, self.cache_dir, self.on_step, self.where)
        return self._items[key]
