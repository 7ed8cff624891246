"""The task seam: what a model is *for*, so nothing downstream talks to logits or labels.

A :class:`Task` says how to fine-tune (``loss`` on a batch), how to predict a whole split, which
metrics it reports with their direction (higher/lower is better) and units (a fraction is read
in percentage points), which one is primary and what tolerance on it is the default, and how
the pruned model's outputs compare with the dense model's (fidelity metrics take the dense
outputs as ``reference``). It also measures a cell (:meth:`Task.measure`) and gives example
inputs of its own dtype. Cells, schedules, the store, the recommendation and the report work
through it; image/tabular classification is one kind (:mod:`prunelab.tasks.classification`).

Adding a task kind: one file here with a registered :class:`Task` subclass, one line in
``tasks/__init__.py``; ``tests/test_task_contract.py`` runs the shared contract over every kind.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.resampled import Statistic
from prunelab.training import full_precision

RECORDS = "records/"  # a cell's per-example validation records (artifact name prefix)
ORIGINAL_RECORDS = "original_records/"  # the model as given, on the same rows (dense controls)
Scorer = Callable[[nn.Module, Any, Any], tuple[dict[str, float], dict[str, np.ndarray]]]


@dataclass(frozen=True)
class MetricInfo:
    """A metric a task reports: its name, direction and units.

    ``fraction``: a 0-1 quantity, so tolerances on it are given in percentage points; ``dead``:
    the value of a model that has lost everything (chance accuracy, mAP 0), when known.

    >>> MetricInfo("loss", higher_is_better=False).sign
    -1.0
    """

    name: str
    higher_is_better: bool
    doc: str = ""
    fraction: bool = False
    dead: float | None = None

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
    tolerance_points: ClassVar[float] = 0.5  # default max drop of a fraction primary, in points
    latency_batches: ClassVar[tuple[int, ...]] = (1,)  # batch sizes ``latency = true`` times
    supports_schedules: ClassVar[bool] = False  # iterative/gradual/regrow/adaptive recovery
    sequence_axis: ClassVar[int | None] = None  # the input axis of variable length (tokens)
    # calibrated criteria (Wanda) prune layer after layer on inputs through the pruned layers,
    # compared per output row, as SparseGPT does (Wanda's reference driver for LLMs)
    sequential_calibration: ClassVar[bool] = False
    options: ClassVar[tuple[str, ...]] = ()  # fields a sweep may set in [task.options]
    #: metrics recomputable from per-example records under example weights (the decision's
    #: paired bootstrap); a metric missing here is resampled over seeds only
    statistics: ClassVar[Mapping[str, Statistic]] = {}

    def default_tolerance(self, dense_value: float) -> float:
        """The default max drop of the primary metric, in its own units: ``tolerance_points``
        points for a fraction; 5 % of the dense value otherwise (e.g. perplexity)."""
        info = self.info(self.primary)
        return self.tolerance_points / 100 if info.fraction else 0.05 * abs(dense_value)

    def check_model(self, model: nn.Module, data: Any) -> None:  # noqa: B027 (optional hook)
        """One clear error when the user's model cannot serve this task (before any training)."""

    def model_from_directory(self, path: str) -> nn.Module:
        """The model saved in a directory (``model = "path/to/dir"``), read as this kind uses it."""
        raise PrunelabError(
            f"a {self.kind} task cannot read a model directory ({path}); directories are read by "
            "the text-classification, sentence-embedding and causal-lm tasks"
        )

    def adapt(self, model: nn.Module) -> nn.Module:
        """The user's model as this kind drives it (e.g. a transformers classifier wrapped so it
        maps token ids to logits); the model itself by default."""
        return model

    def fold(self, data: Any, k: int, fold: int, seed: int, pooled: bool = True) -> Any:
        """Fold ``fold`` of ``k`` for cross-validation (``pooled``: train and validation rows
        pooled, else the validation rows only; :func:`prunelab.data.kfold_bundle`); kinds
        without (x, y) data refuse."""
        raise PrunelabError(f"folds need (x, y) data; a {self.kind} task has none")

    def take(self, split: Any, idx: Tensor) -> Any:
        """The examples ``idx`` of ``split`` (in that order)."""
        return split.take(idx)

    def split_val(self, data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
        """(tuning bundle, deciding bundle): a seeded ``fraction`` of the validation examples
        for what tunes on validation (allocations, adaptive schedules), the rest for the
        decision; both keep the training and test splits."""
        n = len(data.val)
        k = min(max(round(fraction * n), 1), n - 1)
        if n < 2:
            raise PrunelabError(f"a tuning slice needs at least 2 validation examples, got {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        tune, decide = order[:k].sort().values, order[k:].sort().values
        return (
            dataclasses.replace(data, val=self.take(data.val, tune)),
            dataclasses.replace(data, val=self.take(data.val, decide)),
        )

    def references(self, dense: nn.Module, data: Any) -> dict[str, Any]:
        """The dense model's outputs every cell is compared with, per split ('test', 'val')."""
        return {s: self.predict(dense, getattr(data, s)) for s in ("test", "val")}

    def measure(
        self,
        model: nn.Module,
        data: Any,
        refs: dict[str, Any],
        extra: tuple[str, ...] = (),
        scored: Scorer | None = None,
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """A cell's task columns — test metrics, ``val_*`` metrics — and its stored arrays.
        ``extra`` names further metrics a sweep asked for (kinds that have them compute them);
        ``scored`` replaces :meth:`scored` on the validation split (a cell that may stop early
        on a slice of it, :mod:`prunelab.decide.sequential`)."""
        outputs = self.predict(model, data.test)
        row = self.evaluate(model, data.test, refs["test"], outputs)
        val, records = (scored or self.scored)(model, data.val, refs["val"])
        row.update({f"val_{k}": v for k, v in val.items()})
        return row, {**self.artifacts(model, data.test, outputs), **prefixed(records)}

    def scored(
        self, model: nn.Module, split: Any, reference: Any | None
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics of ``model`` on ``split`` and its per-example records: what the decision
        resamples (:meth:`statistic` recomputes a metric from them under example weights)."""
        return self.scored_from(model, split, reference, self.predict(model, split))

    #: :meth:`scored` is :meth:`predict` then :meth:`scored_from`, and outputs of parts of a
    #: split join (:meth:`join_outputs`): a split can be scored in growing slices without
    #: predicting a row twice. A kind whose scoring is one pass of its own says False.
    sliceable_outputs: ClassVar[bool] = True

    def scored_from(
        self, model: nn.Module, split: Any, reference: Any | None, outputs: Any
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """:meth:`scored` given this model's :meth:`predict` outputs on ``split``."""
        metrics = self.evaluate(model, split, reference, outputs)
        return metrics, self.records(split, outputs, reference)

    def join_outputs(self, parts: list[Any], idx: np.ndarray) -> Any:
        """Outputs of several parts of a split (their rows ``idx``, concatenated) joined in the
        order of ``idx`` sorted; outputs of a split taken at rows ``idx`` with one part."""
        order = torch.as_tensor(np.argsort(idx, kind="stable"))
        if all(isinstance(p, Tensor) for p in parts):
            return torch.cat(parts)[order.to(parts[0].device)]
        if all(isinstance(p, list) for p in parts):
            flat = [o for p in parts for o in p]
            return [flat[i] for i in order.tolist()]
        raise PrunelabError(f"a {self.kind} task cannot join outputs of type {type(parts[0])}")

    def records(self, split: Any, outputs: Any, reference: Any | None) -> dict[str, np.ndarray]:
        """Compact per-example arrays (first axis: the examples of ``split``) from which
        :attr:`statistics` recompute metrics; none by default."""
        return {}

    @classmethod
    def statistic(cls, metric: str) -> Statistic | None:
        """``stat(records, weights (B, N)) -> (B,)`` for ``metric``, or None when the metric
        cannot be recomputed from per-example records (then only seeds are resampled)."""
        return cls.statistics.get(metric)

    def quick(self, model: nn.Module, data: Any, refs: dict[str, Any]) -> dict[str, float]:
        """The cheap test metrics of a one-shot model, before recovery (``oneshot_*``)."""
        return self.evaluate(model, data.test, refs["test"])

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

    def run_artifacts(self, data: Any) -> dict[str, np.ndarray]:
        """Arrays the whole run stores once (e.g. the test labels); none by default."""
        return {}

    def artifacts(self, model: nn.Module, split: Any, outputs: Any) -> dict[str, np.ndarray]:
        """Arrays a cell stores for the report (a few detections, generations); none by default."""
        return {}

    @abstractmethod
    def metric_infos(self) -> tuple[MetricInfo, ...]:
        """Every metric :meth:`evaluate` returns, with its direction."""

    @abstractmethod
    def batches(self, split: Any, batch_size: int, generator: torch.Generator | None) -> Iterator:
        """Mini-batches of ``split``; shuffled iff ``generator`` is given."""

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's raw outputs on one batch (what the loss and distillation compare)."""
        return model(self.inputs(batch))

    @abstractmethod
    def loss_of(self, outputs: Any, batch: Any) -> Tensor:
        """The scalar training loss of outputs :meth:`forward` gave on ``batch``."""

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The scalar training loss of ``model`` on one batch (what recovery minimises)."""
        return self.loss_of(self.forward(model, batch), batch)

    def soft_loss(self, student: Any, teacher: Any, temperature: float) -> Tensor:
        """How far a student's outputs are from the dense teacher's (distillation)."""
        raise PrunelabError(f"a {self.kind} task has no distillation loss; set distill = 0")

    def distill_loss(
        self, model: nn.Module, teacher: nn.Module, batch: Any, weight: float, temperature: float
    ) -> Tensor:
        """Recovery's loss when distilling from ``teacher`` (frozen, eval mode):
        ``(1 - weight) · loss + weight · soft_loss(student, teacher, temperature)`` on the
        outputs of :meth:`forward`. A kind whose outputs cannot be compared so (a detector's
        losses) says here what distilling means for it."""
        out = self.forward(model, batch)
        with torch.no_grad(), full_precision():  # the teacher is the float32 reference
            target = self.forward(teacher, batch)
        soft = self.soft_loss(out, target, temperature)
        if weight == 1.0:
            return soft
        return (1 - weight) * self.loss_of(out, batch) + weight * soft

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
    def example_input(self, split: Any, n: int = 1) -> Tensor:
        """The first ``n`` inputs of ``split``, of the model's own dtype (tracing, ONNX export,
        latency)."""

    def described_infos(self) -> tuple[MetricInfo, ...]:
        """Every metric a cell of this kind may store (the metric infos, and any further
        metrics a sweep can ask for)."""
        return self.metric_infos()

    def info(self, name: str) -> MetricInfo:
        """The :class:`MetricInfo` of metric ``name``; one clear error when the task lacks it."""
        infos = {m.name: m for m in self.metric_infos()}
        if name not in infos:
            raise PrunelabError(
                f"task '{self.kind}' has no metric '{name}'; valid: {', '.join(sorted(infos))}"
            )
        return infos[name]

    def describe(self, dense_value: float | None = None) -> dict[str, Any]:
        """JSON-able description stored with a run: kind, primary, default tolerance (metric
        units, from the dense model's primary value) and every metric's direction and units —
        the one place the report, summary, recommendation and CLI read them from."""
        infos = {m.name: m for m in (*self.described_infos(), *FOOTPRINT)}
        return {
            "kind": self.kind,
            "primary": self.primary,
            "fidelity": self.fidelity,
            "tolerance": None if dense_value is None else self.default_tolerance(dense_value),
            "metrics": {
                n: {"higher_is_better": m.higher_is_better, "fraction": m.fraction, "dead": m.dead}
                for n, m in infos.items()
            },
        }


def prefixed(records: Mapping[str, np.ndarray], prefix: str = RECORDS) -> dict[str, np.ndarray]:
    """Records as cell artefacts: ``{prefix + name: array}``."""
    return {f"{prefix}{k}": v for k, v in records.items()}


#: The columns every cell has whatever its kind (:mod:`prunelab.measure.footprint`).
FOOTPRINT = (
    MetricInfo("sparsity", True, "zeros among the pruned layers' weights", fraction=True),
    MetricInfo("model_sparsity", True, "zeros among all the model's parameters", fraction=True),
    MetricInfo("achieved_level", True, "the level reached, in the units levels are asked in"),
    MetricInfo("removed", True, "share of the dense parameters the shipped model lacks", True),
    MetricInfo("nonzeros", False, "non-zero parameters of the whole model"),
    MetricInfo("params", False, "parameters of the whole model (fewer only when cut out)"),
    MetricInfo("macs", False, "multiply-accumulates per example of the shipped model"),
    MetricInfo("sparse_macs", False, "MACs per example counting non-zero weights only"),
    MetricInfo("sparse_bytes", False, "bytes of the sparse checkpoint (bitmask + values)"),
    MetricInfo("latency_b1_ms", False, "median ms per forward pass at batch 1 (shipped model)"),
    MetricInfo("latency_b256_ms", False, "median ms per forward pass at batch 256"),
    MetricInfo("dense_latency_b1_ms", False, "the dense model, timed in the same loop"),
    MetricInfo("dense_latency_b256_ms", False, "the dense model at batch 256, same loop"),
    MetricInfo("speedup_b1", True, "paired ratio dense / shipped latency at batch 1"),
    MetricInfo("fps_b1", True, "examples per second at batch 1"),
    MetricInfo("latency_threads", False, "torch threads the times were measured with"),
)
