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

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure.footprint import footprint
from prunelab.prune.targets import select_targets
from prunelab.recover.dense import trained
from prunelab.sources import resolve
from prunelab.sweep.cell import Cell
from prunelab.tasks import Task, make_task
from prunelab.training import StepCallback


@dataclass
class Context:
    """What all cells of a sweep share: data, the task, the dense model and its outputs."""

    data: Any  # the task kind's bundle (train/val/test splits)
    dense: nn.Module  # the dense model every cell starts from (copied, never changed)
    task: Task
    refs: dict[str, Any]  # the task's references: the dense model's outputs per split, ...
    example: Any  # one input row of the task's dtype (tracing, MAC counts)
    dense_metrics: dict[str, float] = field(default_factory=dict)  # the model as given, on test
    memo: dict[tuple, Any] = field(default_factory=dict)  # per-process: scores, scans
    data_hash: str = ""  # fingerprint of the data as given (checked when a sweep resumes)

    @classmethod
    def build(
        cls, cell: Cell, cache_dir: Path | None = None, on_step: StepCallback | None = None
    ) -> Context:
        """Data, task and dense model of ``cell``'s sweep; ``on_step(step, total)`` follows a
        dense training when one is needed (not cached)."""
        d = cell.data
        data = resolve.load_bundle(d.name, d.loader, d.reader, d.path, **d.loader_kwargs())
        task = task_of(cell, data)
        src = resolve.dense_source(
            cell.model, cell.weights, data, cell.train_dense, d.seed,
            lambda m: task.check_model(m, data),
        )  # fmt: skip
        dense = src.module
        if src.cache is not None:
            name, key = src.cache
            key = {**key, "cfg": cell.dense.identity(), "seed": d.seed}
            dense = trained(dense, name, key, data, cell.dense, cache_dir, d.seed, task, on_step)
        dense = dense.eval()
        targets = select_targets(dense, cell.include or None, cell.exclude or None, cell.prune_last)
        if not targets:
            raise PrunelabError(
                f"model '{cell.model}' has nothing to prune: no Linear or Conv weights "
                "(check include/exclude)"
            )
        task = task.with_dense(dense)
        data_hash = data.fingerprint()  # of the data as given (before any fold split)
        if cell.fold >= 0:  # the dense model is the same for every fold; the splits are not
            data = task.fold(data, cell.folds, cell.fold, d.seed)
        refs = task.references(dense, data)
        example = task.example_input(data.test)
        metrics = task.evaluate(dense, data.test, refs["test"], refs["test"])
        metrics.update(footprint(dense, dense, None, targets.values(), example, dense))
        return cls(data, dense, task, refs, example, metrics, data_hash=data_hash)

    def dense_copy(self) -> nn.Module:
        """A fresh copy of the dense model (each cell prunes its own)."""
        return copy.deepcopy(self.dense)


def task_of(cell: Cell, data: Any = None) -> Task:
    """The cell's task object (custom metrics loaded from their import paths)."""
    t = cell.task
    custom = tuple((c.name, c.path, c.higher_is_better) for c in t.custom)
    return make_task(t.kind, t.primary, custom, data, t.loss)


class ContextCache:
    """Contexts built at most once per process and sweep (data, dense model, dense outputs)."""

    def __init__(self, cache_dir: Path | None, on_step: StepCallback | None = None) -> None:
        self.cache_dir, self.on_step = cache_dir, on_step  # on_step: dense training progress
        self._items: dict[tuple, Context] = {}

    def get(self, item: Any) -> Context:
        """The context of a cell or of anything with ``context_key()`` and ``cell``."""
        key = item.context_key()
        if key not in self._items:
            cell = item if isinstance(item, Cell) else item.cell
            self._items[key] = Context.build(cell, self.cache_dir, self.on_step)
        return self._items[key]
