"""Retained intelligence: a few headline numbers per sparsity level, from stored results.

Inputs are what a sweep stores per cell: the argmax predictions on the test split and the
scalar metrics. One level is compared with the *dense controls*: the dense model fine-tuned
for the same epochs with the same seeds but without pruning (Hooker et al. 2019 compare
against independently trained dense models; fine-tuned controls isolate the effect of
pruning from that of extra training and seed noise). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.classwise import ClassShifts, class_shifts, per_class_recall
from prunelab.measure.metrics.forgetting import PieResult, pies

if TYPE_CHECKING:
    import pandas as pd


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
        recalls = [per_class_recall(p, labels, num_classes) for p in self.preds]
        return torch.stack(recalls).cpu().numpy()  # (S, K)


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
        robustness_gap=_robustness_gap(dense, pruned),
        train_val_gap=pruned.mean("train_val_gap"),
        dense_train_val_gap=dense.mean("train_val_gap"),
    )
    return summary, pie, shifts


def _robustness_gap(dense: LevelRecords, pruned: LevelRecords) -> float:
    """Corruption drop of the pruned seeds minus the dense controls'. Sweeps store
    ``robustness_gap`` (drop minus the *reference* dense model's drop), not the drop; the
    reference's drop cancels in the difference, so either column gives the same number."""
    for name in ("corruption_drop", "robustness_gap"):
        gap = pruned.mean(name) - dense.mean(name)
        if not math.isnan(gap):
            return gap
    return math.nan


GROUP_KEYS = (
    "model",
    "dataset",
    "method",
    "allocation",
    "structure",
    "schedule",
    "ft_epochs",
    "level",
)
CONTROL_KEYS = ("model", "dataset", "ft_epochs")  # a dense control matches on these


def _with_gap(row: Mapping[str, object]) -> dict[str, float]:
    """A stored row as metric floats, deriving ``train_val_gap`` from train/val accuracy."""
    out = {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if "train_val_gap" not in out and {"train_accuracy", "val_accuracy"} <= out.keys():
        out["train_val_gap"] = out["train_accuracy"] - out["val_accuracy"]
    return out


def summarize_results(
    frame: pd.DataFrame,
    load_preds: Callable[[str], np.ndarray],
    labels: np.ndarray,
    num_classes: int,
) -> pd.DataFrame:
    """One :class:`RetainedSummary` row per (configuration, level) of a sweep's results.

    ``frame`` is ``store.load_results(run_dir)`` (dense controls: ``method == "dense"``);
    ``load_preds(cell_id)`` returns a cell's stored ``test_preds`` (N,). Each group of seeds
    is compared with the dense controls of the same model, dataset and fine-tune budget.
    Columns: the group keys, the summary fields, ``n_seeds``, ``n_dense`` and ``pie_indices``.
    """

    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def level_records(rows: pd.DataFrame) -> LevelRecords:
        rows = rows.sort_values("seed")
        preds = torch.stack(
            [torch.as_tensor(np.asarray(load_preds(c)), dtype=torch.long) for c in rows["cell_id"]]
        )  # (S, N)
        return LevelRecords(preds, [_with_gap(r) for r in rows.to_dict("records")])

    keys = [k for k in GROUP_KEYS if k in frame.columns]
    ctrl_keys = [k for k in CONTROL_KEYS if k in frame.columns]
    dense_rows = frame[frame["method"] == "dense"]
    out = []
    for key, rows in frame[frame["method"] != "dense"].groupby(keys, sort=True, dropna=False):
        ident = dict(zip(keys, key, strict=True))
        match = np.ones(len(dense_rows), dtype=bool)
        for k in ctrl_keys:
            match &= (dense_rows[k] == ident[k]).to_numpy()
        if not match.any():
            raise PrunelabError(f"no dense control rows (method 'dense') for {ident}")
        dense = level_records(dense_rows[match])
        summary, pie, _ = retained_summary(dense, level_records(rows), y, num_classes)
        out.append(
            {
                **ident,
                **summary.as_row(),
                "n_seeds": len(rows),
                "n_dense": int(match.sum()),
                "pie_indices": pie.indices.tolist(),
            }
        )
    return pd.DataFrame(out)
