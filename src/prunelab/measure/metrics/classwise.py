"""Per-class damage: recall per class, the worst class drop, and Welch's t-test across seeds.

``worst_class_drop`` is a per-model metric (it reads the dense logits as reference).
:func:`class_shifts` is a cross-seed aggregate: a pure function over per-seed recalls that
the analysis calls on stored predictions, not a metric of one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import stdtr
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import Evaluation, metric

ALPHA = 0.05  # Hooker et al. 2019: a class changes significantly when Welch's p <= 0.05


def per_class_recall(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Recall of each class, (K,) float64; NaN for a class absent from ``labels``.

    >>> per_class_recall(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 3).tolist()
    [0.5, 1.0, nan]
    """
    if preds.shape != labels.shape or preds.ndim != 1:
        raise PrunelabError(
            f"preds and labels must be 1-D of equal length, got {tuple(preds.shape)} "
            f"and {tuple(labels.shape)}"
        )
    hits = torch.bincount(labels[preds == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    out = hits / total.clamp(min=1)
    out[total == 0] = float("nan")
    return out


@metric("worst_class_drop", higher_is_better=False, needs_reference=True, fraction=True)
def worst_class_drop(ev: Evaluation) -> float:
    """Largest per-class recall drop versus the dense reference (fraction; may be < 0)."""
    k = ev.logits.shape[1]
    dense = per_class_recall(ev.need_reference("worst_class_drop").argmax(1), ev.labels, k)
    pruned = per_class_recall(ev.preds, ev.labels, k)
    drop = dense - pruned  # (K,)
    return float(drop[~drop.isnan()].max())


@dataclass(frozen=True)
class ClassShifts:
    """Per-class Welch test of pruned vs dense recall across seeds; arrays of length K."""

    delta: np.ndarray  # mean pruned recall - mean dense recall
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    significant: np.ndarray  # bool, p <= alpha

    @property
    def classes(self) -> list[int]:
        """Indices of the classes that changed significantly."""
        return [int(i) for i in np.flatnonzero(self.significant)]


def welch_t_test(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided Welch's t-test of mean(a) vs mean(b) along axis 0: (t, df, p).

    ``a`` (n_a, K), ``b`` (n_b, K), each n >= 2. Where both samples have zero variance, the
    test is decided exactly: equal means give t = 0, p = 1; different means give t = +-inf,
    p = 0 (scipy returns NaN there).

    >>> t, df, p = welch_t_test(np.array([[1.0], [2.0], [3.0]]), np.array([[4.0], [6.0]]))
    >>> round(float(t[0]), 4), round(float(df[0]), 4), round(float(p[0]), 4)
    (-2.5981, 1.6842, 0.1444)
    """

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]  # (n, 1)
    if a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1:] != b.shape[1:]:
        raise PrunelabError(
            f"Welch's t-test needs >= 2 samples per group with equal trailing shape, got "
            f"{a.shape} and {b.shape}"
        )
    va, vb = a.var(0, ddof=1) / a.shape[0], b.var(0, ddof=1) / b.shape[0]
    diff, se2 = a.mean(0) - b.mean(0), va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2**2 / (va**2 / (a.shape[0] - 1) + vb**2 / (b.shape[0] - 1))
    degenerate = se2 == 0
    t = np.where(degenerate, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)), t)
    df = np.where(degenerate, np.nan, df)
    p = np.where(degenerate, np.where(diff == 0, 1.0, 0.0), 2 * stdtr(df, -np.abs(t)))
    return t, df, p


def class_shifts(
    dense_recalls: np.ndarray, pruned_recalls: np.ndarray, alpha: float = ALPHA
) -> ClassShifts:
    """Which classes change significantly: Welch's t-test per class, p <= ``alpha``.

    ``dense_recalls`` (S_d, K) and ``pruned_recalls`` (S_p, K): per-class recall of each seed.

    >>> d = np.array([[0.9, 0.8], [0.91, 0.82], [0.89, 0.81]])
    >>> p = np.array([[0.6, 0.8], [0.62, 0.83], [0.61, 0.79]])
    >>> class_shifts(d, p).classes
    [0]
    """
    if not 0 < alpha < 1:
        raise PrunelabError(f"alpha must be in (0, 1), got {alpha}")
    dense, pruned = np.asarray(dense_recalls, float), np.asarray(pruned_recalls, float)
    if dense.ndim != 2 or pruned.ndim != 2:
        raise PrunelabError("recalls must be 2-D arrays (seeds, classes)")
    t, df, p = welch_t_test(pruned, dense)
    delta = pruned.mean(0) - dense.mean(0)
    return ClassShifts(delta, t, df, p, p <= alpha)
