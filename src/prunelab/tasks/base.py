"""STAND-IN for the lead's task seam (deleted at the merge with main's ``tasks/base.py``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    doc: str = ""


class Task(ABC):
    kind: ClassVar[str]
    primary: str

    @abstractmethod
    def metric_infos(self) -> tuple[MetricInfo, ...]: ...

    @abstractmethod
    def batches(
        self, split: Any, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Any]: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...

    @abstractmethod
    def inputs(self, batch: Any) -> Any: ...

    @abstractmethod
    def predict(self, model: nn.Module, split: Any) -> Any: ...

    @abstractmethod
    def evaluate(
        self, model: nn.Module, split: Any, reference: Any | None, outputs: Any | None = None
    ) -> dict[str, float]: ...

    def example_input(self, split: Any) -> Tensor:
        raise NotImplementedError
