"""Executors map cells to results. Local (sequential or a process pool) by default; Ray later.

An executor yields ``(cell, result)`` pairs as cells finish, in any order; the driver writes
each to the store the moment it arrives.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Protocol

import torch

from prunelab.device import Placement
from prunelab.errors import PrunelabError
from prunelab.measure.inference import engine, set_engine
from prunelab.progress import Progress
from prunelab.sweep.cell import Cell, CellResult
from prunelab.sweep.context import ContextCache
from prunelab.sweep.ray_executor import RayExecutor
from prunelab.sweep.scan import run_item


class Executor(Protocol):
    def map(
        self, cells: Sequence[Cell], progress: Progress | None = None
    ) -> Iterator[tuple[Cell, CellResult]]: ...


class SequentialExecutor:
    """Runs cells one after another in this process (the default)."""

    def __init__(self, cache_dir: Path | None = None, contexts: ContextCache | None = None) -> None:
        self.contexts = contexts or ContextCache(cache_dir)

    def map(
        self, cells: Sequence[Cell], progress: Progress | None = None
    ) -> Iterator[tuple[Cell, CellResult]]:
        for cell in cells:
            yield cell, run_item(cell, self.contexts.get(cell), progress)


_WORKER_CONTEXTS: ContextCache | None = None  # one per worker process, set by its initializer


def _init_worker(cache_dir: Path | None, threads: int, engine: str, where: Placement) -> None:
    global _WORKER_CONTEXTS

    torch.set_num_threads(threads)
    set_engine(engine)
    _WORKER_CONTEXTS = ContextCache(cache_dir, where=where)


def _run_in_worker(cell: Cell) -> CellResult:
    assert _WORKER_CONTEXTS is not None
    return run_item(cell, _WORKER_CONTEXTS.get(cell))


class ProcessPoolCellExecutor:
    """Runs cells in ``workers`` spawned processes, each with cores/workers torch threads, each
    on ``where``'s device (they share it)."""

    def __init__(
        self, workers: int, cache_dir: Path | None = None, where: Placement | None = None
    ) -> None:
        self.workers = workers
        self.cache_dir = cache_dir
        self.where = where or Placement()

    def map(
        self, cells: Sequence[Cell], progress: Progress | None = None
    ) -> Iterator[tuple[Cell, CellResult]]:
        if not cells:
            return
        # The driver has trained (or loaded) the dense model, so workers only load the cache.
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(
            self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.cache_dir, threads, engine(), self.where),
        ) as pool:
            pending: dict[Future, Cell] = {pool.submit(_run_in_worker, c): c for c in cells}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()


def make_executor(
    name: str,
    workers: int = 1,
    cache_dir: Path | None = None,
    address: str | None = None,
    contexts: ContextCache | None = None,
    where: Placement | None = None,
) -> Executor:
    """``local`` (sequential when workers == 1, else a process pool) or ``ray``, running cells
    on ``where``'s device (``contexts``' when they are given; the CPU by default)."""

    if workers < 1:
        raise PrunelabError(f"workers must be >= 1, got {workers}")
    contexts = contexts or ContextCache(cache_dir, where=where)
    where = contexts.where
    if name == "local":
        return (
            SequentialExecutor(cache_dir, contexts)
            if workers == 1
            else ProcessPoolCellExecutor(workers, cache_dir, where)
        )
    if name == "ray":
        gpus = 1.0 if where.device.type == "cuda" else 0.0  # a GPU per cell, as Ray schedules them
        return RayExecutor(address, workers, cache_dir, contexts, gpus_per_cell=gpus)
    raise PrunelabError(f"unknown executor '{name}'; valid: local, ray")
