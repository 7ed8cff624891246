"""The task seam: what a model is *for*, so nothing downstream talks to logits or labels.

A :class:`Task` says how to fine-tune (``loss`` on a batch), how to predict a whole split, which
metrics it reports with their direction (higher/lower is better), which one is primary, and how
the pruned model's outputs compare with the dense model's (fidelity metrics take the dense
outputs as ``reference``). Cells, schedules, the store, the recommendation and the report work
through it; image/tabular classification is one kind (:mod:`prunelab.tasks.classification`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class MetricInfo:
    """A metric a task reports: its name and direction.

    >>> MetricInfo("loss", higher_is_better=False).sign
    -1.0
    """

    name: str
    higher_is_better: bool
    doc: str = ""

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 otherwise (multiply to make "higher is better")."""
        return 1.0 if self.higher_is_better else -1.0


class Task(ABC):
    """How a model is used: loss for recovery, predictions, metrics, fidelity to the dense model."""

    kind: ClassVar[str]
    primary: str
    fidelity: ClassVar[str]  # the metric comparing the pruned model with the dense one
    default_include: ClassVar[tuple[str, ...]] = ()  # targets when the user names none

    @classmethod
    def for_data(cls, data: Any, **kwargs: Any) -> Task:
        """The task for a sweep's data (a kind that needs e.g. the class count reads it here)."""
        return cls(**kwargs)

    def with_dense(self, dense: nn.Module) -> Task:
        """The task once the dense model is known (a distillation target); ``self`` by default."""
        return self

    def subset(self, split: Any, n: int) -> Any:
        """The first ``n`` examples of ``split`` (quick scans)."""
        return split.subset(n)

    def artifacts(self, model: nn.Module, split: Any, outputs: Any) -> dict[str, np.ndarray]:
        """Arrays a cell stores for the report (a few detections, generations); none by default."""
        return {}

    @abstractmethod
    def metric_infos(self) -> tuple[MetricInfo, ...]:
        """Every metric :meth:`evaluate` returns, with its direction."""

    @abstractmethod
    def batches(self, split: Any, batch_size: int, generator: torch.Generator | None) -> Iterator:
        """Mini-batches of ``split``; shuffled iff ``generator`` is given."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The scalar training loss of ``model`` on one batch (what recovery minimises)."""

    @abstractmethod
    def inputs(self, batch: Any) -> Any:
        """The model-input part of a batch (calibration forwards)."""

    @abstractmethod
    def predict(self, model: nn.Module, split: Any) -> Any:
        """Outputs on a whole split; the dense model's are the fidelity reference."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, split: Any, reference: Any | None, outputs: Any | None = None
    ) -> dict[str, float]:
        """Every metric of :meth:`metric_infos` (fidelity ones need ``reference``)."""

    @abstractmethod
    def example_input(self, split: Any) -> Tensor:
        """A small input batch (tracing, ONNX export, latency)."""

    def info(self, name: str) -> MetricInfo:
        """The :class:`MetricInfo` of metric ``name``; one clear error when the task lacks it."""
        infos = {m.name: m for m in self.metric_infos()}
        if name not in infos:
            raise PrunelabError(
                f"task '{self.kind}' has no metric '{name}'; valid: {', '.join(sorted(infos))}"
            )
        return infos[name]

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with a run: kind, primary, every metric's direction."""
        return {
            "kind": self.kind,
            "primary": self.primary,
            "fidelity": self.fidelity,
            "metrics": {m.name: m.higher_is_better for m in self.metric_infos()},
        }
