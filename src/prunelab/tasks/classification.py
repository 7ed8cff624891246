"""Image and tabular classification: logits (N, K) against integer labels (N,).

The metrics are the registered ones (:data:`prunelab.measure.metrics.METRICS`: accuracy,
macro-F1, loss, agreement and KL with the dense model, calibration, ...) plus any
:class:`CustomMetric` a user gives by import path, ``fn(logits, labels) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.data import DataBundle, Split, kfold_bundle
from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS, evaluate, predict
from prunelab.measure.metrics.base import DEFAULT_METRICS
from prunelab.measure.metrics.robustness import RobustnessSuite, reference_context
from prunelab.measure.resampled import weighted_macro_f1, weighted_mean
from prunelab.sources.data.text import length_batches, token_lengths
from prunelab.sources.hfdir import as_classifier, load_sequence_classifier
from prunelab.sources.user import load_object
from prunelab.tasks.base import FOOTPRINT, MetricInfo, Scorer, Task, prefixed

TRAIN_EVAL_SIZE = 5000  # training rows evaluated for the overfitting gap
VAL_METRICS = ("accuracy", "loss", "agreement", "kl")
TRAIN_METRICS = ("accuracy", "loss")
PRESERVATION = ("ece", "brier", "worst_class_drop", "robustness_gap")
ROBUSTNESS_EXAMPLES = 1000  # test rows the corruption suite runs on


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


def logit_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))`` over the last dim, mean over the rest.

    >>> x = torch.tensor([[1., 2.], [0., 3.]])
    >>> float(logit_kl(x, x, 2.0))
    0.0
    """
    t = temperature
    s = nn.functional.log_softmax(student.flatten(0, -2) / t, dim=-1)  # (N, K)
    r = nn.functional.log_softmax(teacher.flatten(0, -2) / t, dim=-1)
    kl = nn.functional.kl_div(s, r, log_target=True, reduction="batchmean")
    return t * t * kl


def row_records(logits: Tensor, labels: Tensor, reference: Tensor | None) -> dict[str, np.ndarray]:
    """Per-row records of logits (N, K): label, prediction, NLL, and against the dense logits
    agreement and KL(dense ‖ model) (what :data:`ROW_STATISTICS` resample)."""
    lp = nn.functional.log_softmax(logits.double(), dim=1)  # (N, K)
    pred = lp.argmax(1)
    out = {
        "label": labels.numpy().astype(np.int16),
        "pred": pred.numpy().astype(np.int16),
        "nll": (-lp.gather(1, labels[:, None])[:, 0]).numpy(),  # (N,) float64
    }
    if reference is not None:
        ref = nn.functional.log_softmax(reference.double(), dim=1)
        out["agree"] = (pred == ref.argmax(1)).numpy()
        out["kl"] = (ref.exp() * (ref - lp)).sum(1).numpy()  # (N,)
    return out


ROW_STATISTICS = {
    "accuracy": lambda r, w: weighted_mean(r["pred"] == r["label"], w),
    "macro_f1": lambda r, w: weighted_macro_f1(r["pred"].astype(np.int64), r["label"], w),
    "loss": lambda r, w: weighted_mean(r["nll"], w),
    "agreement": lambda r, w: weighted_mean(r["agree"], w),
    "kl": lambda r, w: np.maximum(weighted_mean(r["kl"], w), 0.0),
}


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
    supports_schedules: ClassVar[bool] = True
    statistics: ClassVar[Mapping[str, Any]] = ROW_STATISTICS
    latency_batches: ClassVar[tuple[int, ...]] = (1, 256)
    primary: str = "accuracy"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    custom: tuple[CustomMetric, ...] = field(default=())
    chance: float | None = None  # the majority class's share of the test labels: a dead model's

    def __post_init__(self) -> None:
        for name in self.metrics:
            METRICS.get(name)
        names = {m.name for m in self.metric_infos()}
        if self.primary not in names:
            raise PrunelabError(
                f"primary metric '{self.primary}' is not among the task's metrics: "
                f"{', '.join(sorted(names))}"
            )

    @classmethod
    def for_data(cls, data: Any, **kwargs: Any) -> ClassificationTask:
        """The task for labelled (x, y) data: the majority class's share is the dead accuracy."""
        if data is None:
            return cls(**kwargs)
        if not isinstance(data, DataBundle):
            raise PrunelabError(
                f"a {cls.kind} task needs labelled (x, y) data; the data gives "
                f"{type(data).__name__} (set [task] kind)"
            )
        counts = torch.bincount(data.test.y, minlength=data.num_classes)
        return cls(chance=float(counts.max()) / len(data.test), **kwargs)

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        dead = {"accuracy": self.chance, "agreement": self.chance, "macro_f1": 0.0}
        reg = tuple(
            MetricInfo(n, m.higher_is_better, m.doc, m.fraction, dead.get(n))
            for n in self.metrics
            if (m := METRICS.get(n))
        )
        return reg + tuple(MetricInfo(c.name, c.higher_is_better) for c in self.custom)

    def described_infos(self) -> tuple[MetricInfo, ...]:
        """The task's metrics and every other registered one a sweep may ask for."""
        own = self.metric_infos()
        names = {m.name for m in own}
        rest = (METRICS.get(n) for n in METRICS.names() if n not in names)
        return own + tuple(MetricInfo(m.name, m.higher_is_better, m.doc, m.fraction) for m in rest)

    def run_artifacts(self, data: DataBundle) -> dict[str, np.ndarray]:
        """The test labels (for forgotten examples and per-class damage in the report)."""
        return {"test_labels": data.test.y.cpu().numpy().astype(np.int16)}

    def check_model(self, model: nn.Module, data: DataBundle) -> None:
        """Run ``model`` on a few test rows and check its outputs fit the labels."""
        head = data.test.subset(32)
        self.check_outputs(self.predict(model, head), head, data.num_classes)

    def fold(
        self, data: DataBundle, k: int, fold: int, seed: int, pooled: bool = True
    ) -> DataBundle:
        return kfold_bundle(data, k, fold, seed, pooled)

    def references(self, dense: nn.Module, data: DataBundle) -> dict[str, Any]:
        """Dense logits on test, validation and the first training rows (the overfitting gap),
        and the dense model's corruption profile for image inputs (robustness gap)."""
        train = data.train.subset(TRAIN_EVAL_SIZE)
        refs: dict[str, Any] = {
            "test": self.predict(dense, data.test),
            "val": self.predict(dense, data.val),
            "train": self.predict(dense, train),
            "train_split": train,
            "robustness": {},
        }
        self.check_outputs(refs["test"], data.test)
        if data.test.x.dim() == 4:
            suite = RobustnessSuite(max_examples=ROBUSTNESS_EXAMPLES)
            refs["robustness"] = reference_context(dense, data.test, suite)
        return refs

    def measure(
        self,
        model: nn.Module,
        data: DataBundle,
        refs: dict[str, Any],
        extra: tuple[str, ...] = (),
        scored: Scorer | None = None,
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Test metrics (quality, calibration, class damage, robustness; sizes come from the
        footprint), validation and train metrics, and the test predictions (for PIEs)."""
        preservation = PRESERVATION if refs["robustness"] else PRESERVATION[:-1]
        skip = {m.name for m in FOOTPRINT}
        wanted = (*(m.name for m in self.metric_infos()), *preservation, *extra)
        names = tuple(n for n in dict.fromkeys(wanted) if n not in skip)
        logits = self.predict(model, data.test)  # (N, K), shared by the metrics and the preds
        row = self.evaluate(model, data.test, refs["test"], logits, names, refs["robustness"])
        val, records = (scored or self.scored)(model, data.val, refs["val"])
        row.update({f"val_{k}": v for k, v in val.items()})
        train = self.evaluate(model, refs["train_split"], refs["train"], names=TRAIN_METRICS)
        row.update({f"train_{k}": v for k, v in train.items()})
        preds = logits.argmax(1).to(torch.int16).cpu().numpy()
        return row, {"test_preds": preds, **prefixed(records)}

    def scored(
        self, model: nn.Module, split: Split, reference: Tensor | None
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The validation metrics (accuracy, loss, agreement, KL and the primary) and per-row
        records."""
        return self.scored_from(model, split, reference, self.predict(model, split))

    def scored_from(
        self, model: nn.Module, split: Split, reference: Tensor | None, outputs: Tensor
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        names = tuple(dict.fromkeys(VAL_METRICS + (self.primary,)))
        return self.evaluate(model, split, reference, outputs, names), self.records(
            split, outputs, reference
        )

    def records(
        self, split: Split, outputs: Tensor, reference: Tensor | None
    ) -> dict[str, np.ndarray]:
        return row_records(outputs, split.y, reference)

    def quick(self, model: nn.Module, data: DataBundle, refs: dict[str, Any]) -> dict[str, float]:
        names = tuple(n for n in DEFAULT_METRICS if n not in {m.name for m in FOOTPRINT})
        return self.evaluate(model, data.test, refs["test"], names=names)

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        return split.batches(batch_size, shuffle=generator is not None, generator=generator)

    def loss_of(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(outputs, batch[1])

    def soft_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` (Hinton et al. 2015)."""
        return logit_kl(student, teacher, temperature)

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

    def example_input(self, split: Split, n: int = 1) -> Tensor:
        return split.x[:n]

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
    sequence_axis: ClassVar[int | None] = 1  # (N, T) token ids: T varies
    pad_id: int = 0  # the id padding the token rows (the data's tokenizer's)

    @classmethod
    def for_data(cls, data: Any, **kwargs: Any) -> TextClassificationTask:
        """The task for token-id data: its pad id comes with it (0 when the data has none)."""
        pad = getattr(data, "pad_id", None)
        return super().for_data(data, **kwargs, **({} if pad is None else {"pad_id": pad}))

    def model_from_directory(self, path: str) -> nn.Module:
        """A transformers sequence-classification directory, its tokenizer beside it."""
        return load_sequence_classifier(path)

    def adapt(self, model: nn.Module) -> nn.Module:
        """A factory's transformers classifier, wrapped to map token ids to logits."""
        return as_classifier(model)

    def check_model(self, model: nn.Module, data: DataBundle) -> None:
        """The model masks the data's padding (same pad id), and its outputs fit the labels."""
        pad = getattr(model, "pad_id", None)
        if pad is not None and pad != self.pad_id:
            raise PrunelabError(
                f"the model masks pad id {pad} but the data is padded with {self.pad_id}: "
                "tokenize the data with the model's own tokenizer"
            )
        super().check_model(model, data)

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Rows of similar length batched together (shuffled with a generator): the encoder
        trims padding per batch, so it computes less. Lengths count non-zero ids; another pad
        id only makes the grouping less tight, never the batches wrong."""
        groups = length_batches(token_lengths(split.x, self.pad_id), batch_size, generator)
        return ((split.x[idx], split.y[idx]) for idx in groups)

    def predict(self, model: nn.Module, split: Split) -> Tensor:
        return predict(model, split.x, 128, token_lengths(split.x, self.pad_id))  # (N, K)
