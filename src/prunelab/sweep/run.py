"""The sweep driver: expand cells, skip finished ones, run the rest, store each as it lands."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from prunelab.device import Placement
from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.progress import Progress
from prunelab.sources import resolve
from prunelab.sweep.auto import search_levels
from prunelab.sweep.cell import Cell, CellResult
from prunelab.sweep.context import ContextCache
from prunelab.sweep.executors import Executor, SequentialExecutor
from prunelab.sweep.plan import expand_cells
from prunelab.sweep.scan import ScanJob, scan_jobs
from prunelab.sweep.spec import SweepSpec
from prunelab.sweep.store import RUN_ID, Store
from prunelab.track import TrackedCell, TrackedSweep, Tracker

log = logging.getLogger(__name__)
SCAN_KEY = "sensitivity/magnitude/dense"  # store meta: the dense model's sensitivity table
OnCell = Callable[[Cell, CellResult], None]


@dataclass(frozen=True)
class SweepOutcome:
    run_dir: Path
    total: int
    skipped: int
    ran: int


def environment() -> dict[str, Any]:
    """Library versions and threads, recorded with every run."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
        "engine": inference.engine(),  # compiled vs eager evaluation (last-bit differences)
    }
    for pkg in (
        "prunelab",
        "torch",
        "numpy",
        "scipy",
        "scikit-learn",
        "safetensors",
        "ray",
        "optuna",
        "onnx",
        "onnxruntime",
        "transformers",
    ):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    return env


def _claim_run_dir(store: Store, spec: SweepSpec) -> None:
    """Record the spec in a new run dir, or check it matches when resuming (never overwrite)."""
    spec_json = json.loads(json.dumps(spec.to_dict()))
    prints = resolve.fingerprint(
        spec.model, spec.weights, spec.data.loader, spec.task.code_paths()
    )
    previous = store.get_meta("spec")
    if previous is None:
        store.set_meta("spec", spec_json)
        store.set_meta("source", prints)
        return
    if previous != spec_json:
        raise PrunelabError(
            f"run directory {store.run_dir} holds a different sweep; use another --out "
            "directory (results are never overwritten)"
        )
    stored = store.get_meta("source") or {}
    changed = sorted(k for k in set(prints) | set(stored) if prints.get(k) != stored.get(k))
    if changed:
        raise PrunelabError(
            f"cannot resume {store.run_dir}: {', '.join(changed)} changed since the sweep "
            "started (results would mix old and new); use another --out directory"
        )


def run_sweep(
    spec: SweepSpec,
    run_dir: Path,
    executor: Executor | None = None,
    on_cell: OnCell | None = None,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    contexts: ContextCache | None = None,
    tracker: Tracker | None = None,
    where: Placement | None = None,
) -> SweepOutcome:
    """Run every unfinished cell of ``spec`` and persist results in ``run_dir``.

    Re-running the same spec on the same directory resumes: finished cells are skipped.
    With a ``tracker`` (:func:`prunelab.track.tracking`), every finished cell the tracker's
    store lacks is logged to it, each once: those finished before, then each as it lands.
    ``where`` (:class:`prunelab.device.Placement`) is the device and dtype the sweep computes
    in (the CPU by default; ``contexts``' when they are given).
    """
    run_dir = Path(run_dir)
    contexts = contexts or ContextCache(cache_dir, where=where)
    executor = executor or SequentialExecutor(cache_dir, contexts)
    with Store(run_dir) as store:
        _claim_run_dir(store, spec)
        cells = expand_cells(spec)
        done = store.finished_ids()
        pending = [c for c in cells if c.cell_id not in done]
        log.info("%d cells, %d already finished", len(cells), len(cells) - len(pending))
        if store.get_meta("dense_metrics") is None:
            ctx = contexts.get(cells[0])
            store.set_meta("env", environment())
            _record_engine_failures(store, ctx.dense_copy())
            store.set_meta("data_hash", ctx.data_hash)
            if progress is not None:  # a full measurement: minutes for a language model
                progress("measuring the original model", 0, 1)
            original = ctx.measure_original(cells[0])
            store.set_meta("dense_metrics", original)  # the model as given
            store.set_meta("task", ctx.task.describe(original.get(ctx.task.primary)))
            for name, arr in ctx.task.run_artifacts(ctx.data).items():
                store.put_artifact(RUN_ID, name, arr)
        elif pending or spec.search is not None:  # a resumed search may run new cells
            ctx = contexts.get((pending or cells)[0])
            if ctx.data_hash != store.get_meta("data_hash"):
                raise PrunelabError(
                    f"cannot resume {store.run_dir}: the data changed since the sweep started "
                    "(results would mix old and new); use another --out directory"
                )
        if tracker is not None:
            _start_tracking(store, tracker)
        jobs: list = []
        if spec.sensitivity_scan and store.get_meta(SCAN_KEY) is None:
            jobs = scan_jobs(cells[0], contexts.get(cells[0]))  # first: the longest items
        scanned: dict[str, list[dict]] = {}
        if progress is not None and pending:  # until the executor reports (pools do not)
            progress("running the cells", 0, len(pending))
        for item, result in executor.map([*jobs, *pending], progress):
            if isinstance(item, ScanJob):
                scanned[item.layer] = result
                if len(scanned) == len(jobs):
                    store.set_meta(SCAN_KEY, [r for j in jobs for r in scanned[j.layer]])
                continue
            _keep(store, item, result, on_cell, tracker)
        total, ran = len(cells), len(pending)
        if spec.search is not None:

            def run_cells(cells: Sequence[Cell]) -> None:
                for cell, result in executor.map(cells, progress):
                    _keep(store, cell, result, on_cell, tracker)

            searched = search_levels(spec, store, run_cells)
            total, ran = total + searched.asked, ran + searched.ran
        if pending and isinstance(executor, SequentialExecutor):  # pruned models, this process
            ctx = executor.contexts.get(pending[0])
            _record_engine_failures(store, ctx.dense_copy())
    return SweepOutcome(run_dir, total, total - ran, ran)


def _keep(
    store: Store, cell: Cell, result: CellResult, on_cell: OnCell | None, tracker: Tracker | None
) -> None:
    """Store one finished cell (and the run-level records it made); log it to the tracker."""
    store.put_cell(cell.cell_id, cell.to_json(), result.row, result.duration_s, result.artifacts)
    for key, value in result.records.items():
        store.set_meta(key, value)
    if tracker is not None:
        tracker.log_cell(
            TrackedCell(cell.cell_id, cell.label, cell.to_json(), result.row, result.duration_s,
                        time.time())
        )  # fmt: skip
    if on_cell is not None:
        on_cell(cell, result)


def _start_tracking(store: Store, tracker: Tracker) -> None:
    """Open the sweep's run in the tracker (found again by the sweep's id when resuming) and
    log the finished cells it lacks."""
    sweep_id = store.get_meta("sweep_id")
    if sweep_id is None:
        sweep_id = uuid.uuid4().hex
        store.set_meta("sweep_id", sweep_id)
    tracker.start(
        TrackedSweep(sweep_id, store.run_dir, store.get_meta("spec"),
                     store.get_meta("dense_metrics") or {}, store.get_meta("task") or {})
    )  # fmt: skip
    logged = tracker.logged()
    for cell_id, raw, row, duration, finished_at in store.cells():
        if cell_id not in logged:
            label = Cell.from_json(raw).label
            tracker.log_cell(TrackedCell(cell_id, label, raw, row, duration, finished_at))


def _record_engine_failures(store: Store, model: torch.nn.Module) -> None:
    """Add to the run's ``env`` why ``model``'s class is evaluated eagerly, if it is (the
    failure is also logged as a warning, once per class and process)."""
    failed = inference.compile_failures(model)
    env = store.get_meta("env") or {}
    if failed and env.get("engine_failures") != failed:
        store.set_meta("env", {**env, "engine_failures": failed})
