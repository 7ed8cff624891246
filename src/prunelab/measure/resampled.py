"""Metrics recomputed under example weights: the statistics a paired bootstrap resamples.

A task stores, per cell, compact per-example *records* of its validation split (correctness and
NLL per row, NLL and token counts per window, matched detections per image, ...). A statistic
maps records and a ``(B, N)`` matrix of example weights — bootstrap multiplicities of the ``N``
examples — to ``B`` metric values. With every weight 1 it gives the metric the task reports.

>>> w = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 0.0]])  # (B=2, N=4)
>>> weighted_mean(np.array([1.0, 0.0, 1.0, 1.0]), w)
array([0.75, 0.5 ])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Records = Mapping[str, np.ndarray]  # per-example arrays, first axis = examples
Statistic = Callable[[Records, np.ndarray], np.ndarray]  # (records, (B, N) weights) -> (B,)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) weighted means of per-example ``values`` (N,) under ``weights`` (B, N)."""
    return weighted_ratio(values, np.ones(len(values)), weights)


def weighted_ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) ``Σ w·num / Σ w·den`` (e.g. NLL summed over windows / tokens in them).

    >>> weighted_ratio(np.array([2.0, 6.0]), np.array([1.0, 3.0]), np.array([[1.0, 1.0]]))
    array([2.])
    """
    w = np.asarray(weights, np.float64)
    top = w @ np.asarray(num, np.float64)  # (B,)
    bottom = w @ np.asarray(den, np.float64)
    return top / np.where(bottom > 0, bottom, np.nan)


def weighted_macro_f1(pred: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) macro-F1 over the classes present (in labels or predictions) under the weights."""
    k = int(max(pred.max(), label.max())) + 1
    w = np.asarray(weights, np.float64)
    onehot = np.eye(k)
    tp = w @ (onehot[label] * (pred == label)[:, None])  # (B, K)
    n_pred, n_true = w @ onehot[pred], w @ onehot[label]
    total = n_pred + n_true
    present = total > 0
    f1 = 2 * tp / np.where(present, total, 1)
    return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)


def weighted_min(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) smallest value among the examples drawn (weight > 0)."""
    v = np.where(np.asarray(weights) > 0, np.asarray(values, np.float64)[None, :], np.inf)
    return v.min(axis=1)


# --- detection: COCO-style average precision from matched detections ---------------------------

RECALL_POINTS = np.linspace(0.0, 1.00, 101, endpoint=True)  # COCO's 101 recall thresholds


def weighted_ap(
    image: np.ndarray,
    label: np.ndarray,
    score: np.ndarray,
    tp: np.ndarray,
    gt_count: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """(B,) COCO mAP (101-point interpolated precision, mean over classes with ground truth)
    of matched detections under image weights.

    ``image``/``label``/``score`` (D,) and ``tp`` (D,) True where the detection matched a
    ground-truth box (as COCO matches, at one IoU threshold); ``gt_count`` (N, K) boxes per
    image and class; ``weights`` (B, N) multiplicities of the N images. An image drawn twice
    counts its detections and boxes twice, as if it were in the split twice.
    """
    w = np.asarray(weights, np.float64)
    order = np.argsort(-score, kind="mergesort")  # COCO: stable, highest score first
    image, label, tp = image[order], label[order], tp[order].astype(np.float64)
    n_gt = w @ np.asarray(gt_count, np.float64)  # (B, K)
    ap = np.full(n_gt.shape, np.nan)
    for k in range(n_gt.shape[1]):
        has = n_gt[:, k] > 0
        if not has.any():
            continue
        pick = label == k
        wk = w[:, image[pick]]  # (B, D_k) weight of each detection of class k
        tps = np.cumsum(wk * tp[pick], axis=1)
        fps = np.cumsum(wk * (1 - tp[pick]), axis=1)
        ap[has, k] = _ap(tps[has], fps[has], n_gt[has, k])
    defined = ~np.isnan(ap)
    return np.where(defined, ap, 0).sum(1) / np.maximum(defined.sum(1), 1)  # 0 without truth


def _ap(tps: np.ndarray, fps: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """(B,) interpolated AP from cumulative (weighted) true and false positives (B, D)."""
    if tps.shape[1] == 0:
        return np.zeros(len(n_gt))
    recall = tps / n_gt[:, None]  # (B, D)
    seen = tps + fps
    precision = np.where(seen > 0, tps / np.where(seen > 0, seen, 1), 0.0)
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, 1), axis=1), 1)  # (B, D)
    # recall threshold r reads the precision at the first detection with recall >= r
    reached = np.searchsorted(RECALL_POINTS, recall, side="right")  # (B, D) thresholds <= recall
    gained = np.diff(reached, axis=1, prepend=0)
    return (envelope * gained).sum(1) / len(RECALL_POINTS)


# --- growing validation slices (a cell measured on part of the validation rows) ------------
def slice_rows(n: int, m: int) -> np.ndarray:
    """The validation rows (sorted indices) a cell measured on the first ``m`` of ``n`` rows
    uses: the first ``m`` of one fixed permutation of ``n``, so slices grow by nesting, are
    spread over a split that may be sorted by class, and every reader can rebuild them.

    >>> slice_rows(8, 3), bool(np.isin(slice_rows(8, 3), slice_rows(8, 5)).all())
    (array([2, 3, 4]), True)
    """
    if not 0 < m <= n:
        raise ValueError(f"a slice of {m} rows out of {n}")
    if m == n:
        return np.arange(n)
    perm = np.random.default_rng(0).permutation(n)
    return np.sort(perm[:m])


def size_of(records: Records) -> int:
    """The number of examples: the common length of the per-example arrays (arrays named
    ``det_*`` hold one entry per detection, indexed by ``det_image``)."""
    sizes = {len(v) for k, v in records.items() if not k.startswith("det_")}
    if len(sizes) != 1:
        raise ValueError(f"records {sorted(records)} disagree on the number of examples")
    return sizes.pop()


def take_records(records: Records, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The records of examples ``idx`` (sorted) renumbered ``0..len(idx)-1``; detections
    (``det_*``) follow their image."""
    idx = np.asarray(idx)
    out = {k: np.asarray(v)[idx] for k, v in records.items() if not k.startswith("det_")}
    if "det_image" in records:
        images = np.asarray(records["det_image"])
        keep = np.isin(images, idx)
        for k, v in records.items():
            if k.startswith("det_"):
                out[k] = np.asarray(v)[keep]
        out["det_image"] = np.searchsorted(idx, images[keep]).astype(images.dtype)
    return out


def on_slice(records: Records, n: int, m: int) -> dict[str, np.ndarray] | Records:
    """``records`` of a split of ``n`` rows (or of one of its slices) cut to the slice of
    ``m`` rows (:func:`slice_rows`); unchanged when they already hold ``m`` rows."""
    size = size_of(records)
    if size == m:
        return records
    if size < m:
        raise ValueError(f"records of {size} rows cannot be cut to {m}")
    have, want = slice_rows(n, size), slice_rows(n, m)
    return take_records(records, np.searchsorted(have, want))
