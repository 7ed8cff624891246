"""Image and tabular classification: logits (N, K) against integer labels (N,).

The metrics are the registered ones (:data:`prunelab.measure.metrics.METRICS`: accuracy,
macro-F1, loss, agreement and KL with the dense model, calibration, ...) plus any
:class:`CustomMetric` a user gives by import path, ``fn(logits, labels) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS, evaluate, predict
from prunelab.measure.metrics.base import DEFAULT_METRICS
from prunelab.sources.data.base import Split
from prunelab.sources.data.text import length_batches, token_lengths
from prunelab.sources.user import load_object
from prunelab.tasks.base import MetricInfo, Task


@dataclass(frozen=True)
class CustomMetric:
    """A user's metric: ``fn(logits (N, K), labels (N,)) -> float`` with its direction.

    >>> m = CustomMetric("top1", lambda lg, y: float((lg.argmax(1) == y).float().mean()))
    >>> m(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    0.5
    """

    name: str
    fn: Callable[[Tensor, Tensor], float]
    higher_is_better: bool = True
    path: str | None = None  # the import path it came from: pickles by path, not by module

    def __reduce__(self) -> tuple:
        """Travel to worker processes (Ray) by import path: the user's module, loaded by file,
        has no importable name there."""
        if self.path is None:
            return (CustomMetric, (self.name, self.fn, self.higher_is_better))
        return (_custom_from_path, (self.name, self.path, self.higher_is_better))

    def __call__(self, logits: Tensor, labels: Tensor) -> float:
        value = self.fn(logits, labels)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PrunelabError(
                f"custom metric '{self.name}' returned {type(value).__name__}, not a number"
            ) from None


def _custom_from_path(name: str, path: str, higher_is_better: bool) -> CustomMetric:
    return CustomMetric(name, load_object(path), higher_is_better, path)


@dataclass(frozen=True)
class ClassificationTask(Task):
    """Classification with the registered metrics; ``primary`` decides the recommendation.

    >>> t = ClassificationTask()
    >>> t.primary, t.info("loss").higher_is_better
    ('accuracy', False)
    """

    kind: ClassVar[str] = "classification"
    fidelity: ClassVar[str] = "agreement"
    primary: str = "accuracy"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    custom: tuple[CustomMetric, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in self.metrics:
            METRICS.get(name)
        names = {m.name for m in self.metric_infos()}
        if self.primary not in names:
            raise PrunelabError(
                f"primary metric '{self.primary}' is not among the task's metrics: "
                f"{', '.join(sorted(names))}"
            )

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        reg = tuple(
            MetricInfo(n, METRICS.get(n).higher_is_better, METRICS.get(n).doc) for n in self.metrics
        )
        return reg + tuple(MetricInfo(c.name, c.higher_is_better) for c in self.custom)

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        return split.batches(batch_size, shuffle=generator is not None, generator=generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return batch[0]

    def predict(self, model: nn.Module, split: Split) -> Tensor:
        return predict(model, split.x)  # (N, K) logits

    def evaluate(
        self,
        model: nn.Module,
        split: Split,
        reference: Any | None,
        outputs: Any | None = None,
        names: Sequence[str] | None = None,
        context: Mapping[str, object] | None = None,
    ) -> dict[str, float]:
        """The task's metrics (or ``names``) of ``model`` on ``split``; custom ones included."""
        custom = {c.name: c for c in self.custom}
        wanted = list(names) if names is not None else [m.name for m in self.metric_infos()]
        if reference is None:
            wanted = [n for n in wanted if n in custom or not METRICS.get(n).needs_reference]
        logits = self.predict(model, split) if outputs is None else outputs
        registered = [n for n in wanted if n not in custom]
        out = evaluate(model, split, reference, registered, context=context, logits=logits)
        for n in wanted:
            if n in custom:
                out[n] = custom[n](logits, split.y)
        return out

    def example_input(self, split: Split) -> Tensor:
        return split.x[:1]

    def check_model(self, model: nn.Module, split: Split, num_classes: int) -> None:
        """Run ``model`` on a few rows and check its outputs fit the labels (before training)."""
        head = split.subset(32)
        self.check_outputs(self.predict(model, head), head, num_classes)

    def check_outputs(self, outputs: Tensor, split: Split, num_classes: int | None = None) -> None:
        """One clear line when the model's outputs cannot be scored against the labels."""
        if outputs.dim() != 2 or outputs.shape[0] != len(split):
            raise PrunelabError(
                f"model output of shape {tuple(outputs.shape)} does not fit {len(split)} labels: "
                "a classifier must return logits of shape (N, num_classes)"
            )
        k = num_classes or int(split.y.max()) + 1
        if outputs.shape[1] < k:
            raise PrunelabError(
                f"model outputs {outputs.shape[1]} classes but the labels go up to {k - 1}"
            )
        if not torch.isfinite(outputs).all():
            raise PrunelabError("the model's outputs contain NaN or Inf on the test split")


@dataclass(frozen=True)
class TextClassificationTask(ClassificationTask):
    """Classification of token-id sequences (N, T) by a transformer encoder with a head.

    The metrics are the classification ones; image-only measures (corruption robustness) are
    skipped because the inputs are not images.

    >>> TextClassificationTask().kind, TextClassificationTask().primary
    ('text-classification', 'accuracy')
    """

    kind: ClassVar[str] = "text-classification"

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Rows of similar length batched together (shuffled with a generator): the encoder
        trims padding per batch, so it computes less. Lengths count non-zero ids; another pad
        id only makes the grouping less tight, never the batches wrong."""
        groups = length_batches(token_lengths(split.x), batch_size, generator)
        return ((split.x[idx], split.y[idx]) for idx in groups)

    def predict(self, model: nn.Module, split: Split) -> Tensor:
        return predict(model, split.x, 128, token_lengths(split.x))  # (N, K), row order
