"""Retained intelligence: a few headline numbers per sparsity level, from stored results.

Inputs are what a sweep stores per cell: the argmax predictions on the test split and the
scalar metrics. One level is compared with the *dense controls*: the dense model fine-tuned
for the same epochs with the same seeds but without pruning (Hooker et al. 2019 compare
against independently trained dense models; fine-tuned controls isolate the effect of
pruning from that of extra training and seed noise). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.metrics.classwise import ClassShifts, class_shifts, per_class_recall
from prunelab.metrics.forgetting import PieResult, pies


@dataclass(frozen=True)
class LevelRecords:
    """The stored results of the seeds of one level: preds (S, N) and S metric dicts."""

    preds: Tensor
    metrics: Sequence[Mapping[str, float]]

    def __post_init__(self) -> None:
        if self.preds.ndim != 2 or self.preds.shape[0] != len(self.metrics):
            raise PrunelabError(
                f"need one metrics row per seed: preds {tuple(self.preds.shape)}, "
                f"{len(self.metrics)} metric rows"
            )

    def mean(self, name: str) -> float:
        """Mean of a stored metric over seeds; NaN when a seed did not record it."""
        return float(np.mean([row.get(name, math.nan) for row in self.metrics]))

    def recalls(self, labels: Tensor, num_classes: int) -> np.ndarray:
        """Per-class recall of each seed, (S, K)."""
        return torch.stack([per_class_recall(p, labels, num_classes) for p in self.preds]).numpy()


@dataclass(frozen=True)
class RetainedSummary:
    """Headline numbers of one level versus the dense controls (see docs/metrics.md)."""

    accuracy: float  # mean over seeds
    accuracy_retained_pct: float  # 100 * accuracy / dense accuracy
    agreement: float  # mean top-1 agreement with the dense reference model
    delta_ece: float  # ECE - dense ECE
    pie_pct: float  # 100 * fraction of test examples that are PIEs
    dense_accuracy_on_pies: float
    worst_class_drop: float  # max over classes of dense recall - recall (fraction)
    worst_class: int
    significant_classes: tuple[int, ...]  # Welch p <= 0.05; empty when S_dense < 2
    robustness_gap: float  # corruption drop - dense corruption drop
    train_val_gap: float  # train - val accuracy (this level)
    dense_train_val_gap: float

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def retained_summary(
    dense: LevelRecords, pruned: LevelRecords, labels: Tensor, num_classes: int
) -> tuple[RetainedSummary, PieResult, ClassShifts | None]:
    """Summarise one level against the dense controls; also return the PIEs and class tests."""
    pie = pies(dense.preds, pruned.preds, labels, num_classes)
    d_rec, p_rec = dense.recalls(labels, num_classes), pruned.recalls(labels, num_classes)
    drop = d_rec.mean(0) - p_rec.mean(0)  # (K,)
    worst = int(np.nanargmax(drop))
    enough = dense.preds.shape[0] >= 2 and pruned.preds.shape[0] >= 2
    shifts = class_shifts(d_rec, p_rec) if enough else None
    dense_acc = dense.mean("accuracy")
    summary = RetainedSummary(
        accuracy=pruned.mean("accuracy"),
        accuracy_retained_pct=100 * pruned.mean("accuracy") / dense_acc,
        agreement=pruned.mean("agreement"),
        delta_ece=pruned.mean("ece") - dense.mean("ece"),
        pie_pct=100 * pie.fraction,
        dense_accuracy_on_pies=pie.dense_accuracy_on_pies,
        worst_class_drop=float(drop[worst]),
        worst_class=worst,
        significant_classes=tuple(shifts.classes) if shifts is not None else (),
        robustness_gap=pruned.mean("corruption_drop") - dense.mean("corruption_drop"),
        train_val_gap=pruned.mean("train_val_gap"),
        dense_train_val_gap=dense.mean("train_val_gap"),
    )
    return summary, pie, shifts
