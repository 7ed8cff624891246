"""Export formats: one registry. A format writes one pruned model to a path and checks it.

Each format lives in its own module and registers a function ``write(job, out) -> Exported``
with :data:`FORMATS` (``sparse``, ``slim`` and ``onnx`` in :mod:`prunelab.ship.export`,
``keras`` in :mod:`prunelab.ship.keras`); adding one is one file, one import line in
``ship/__init__.py``, and the contract test in ``tests/test_export.py`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prunelab.registry import Registry


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the file, its size, and the dense safetensors size for scale."""

    path: Path
    bytes: int
    dense_bytes: int
    detail: str = ""

    @property
    def ratio(self) -> float:
        return self.bytes / self.dense_bytes


@dataclass(frozen=True, eq=False)
class ExportJob:
    """Everything a format may need: the pruned model, how it was pruned, example inputs of
    the task's dtype, and where the model came from (a registry name or a file)."""

    model: nn.Module
    examples: Tensor  # rows of real inputs (checks, tracing)
    structure: Any = None  # the cell's Structure (None: the dense control)
    source: str = ""  # the run's model: a registry name, an import path or a file
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    sequence_axis: int | None = None  # the input axis of variable length (token ids), if any
    dense: nn.Module | None = None  # the dense model (sizes of what was removed), when known
    tokenizer: str | None = None  # token data's tokenizer (a short name or a path), if any


Format = Callable[[ExportJob, Path], Exported]
FORMATS: Registry[Format] = Registry("export format")
