"""Per-process cache of sweep contexts, shared by every executor."""

from __future__ import annotations

from pathlib import Path

from prunelab.recover.finetune import StepCallback
from prunelab.sweep.cell import Cell, Context
from prunelab.sweep.scan import ScanJob


class ContextCache:
    """Contexts built at most once per process and sweep (data, dense model, dense outputs)."""

    def __init__(self, cache_dir: Path | None, on_step: StepCallback | None = None) -> None:
        self.cache_dir, self.on_step = cache_dir, on_step  # on_step: dense training progress
        self._items: dict[tuple, Context] = {}

    def get(self, item: Cell | ScanJob) -> Context:
        key = item.context_key()
        if key not in self._items:
            cell = item.cell if isinstance(item, ScanJob) else item
            self._items[key] = Context.build(cell, self.cache_dir, self.on_step)
        return self._items[key]
