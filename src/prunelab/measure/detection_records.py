"""Per-image detection records: COCO's matching kept per detection, so mAP can be recomputed
under image weights (the decision's paired bootstrap) without re-running pycocotools.

Each detection is matched as ``COCOeval.evaluateImg`` matches it: per image and class, the
highest-scoring 100 detections in score order, each to the unmatched ground-truth box of its
class with the largest IoU at or above the threshold. :func:`weighted_ap` then accumulates as
``COCOeval.accumulate`` does (101 recall points, precision envelope, mean over classes with
ground truth). With every weight 1 it reproduces ``pycocotools``' mAP@0.5 and mAP@0.5:0.95 up to
the order of tied scores across images (``tests/test_task_contract.py`` checks the agreement).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prunelab.measure.detection import precision_recall
from prunelab.measure.resampled import Records, weighted_ap, weighted_ratio
from prunelab.sources.models.boxes import Detections, box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.50:0.05:0.95
MAX_DETS = 100  # COCO's detections per image (and class) that count


def _match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """(D,) True where each detection (rows, in score order) matches a free box (columns)."""
    free = np.ones(iou.shape[1], dtype=bool)
    hit = np.zeros(iou.shape[0], dtype=bool)
    for d in range(iou.shape[0]):
        best, j = min(threshold, 1 - 1e-10), -1
        for g in range(iou.shape[1]):
            if free[g] and iou[d, g] >= best:
                best, j = iou[d, g], g
        if j >= 0:
            free[j], hit[d] = False, True
    return hit


def detection_records(
    preds: Sequence[Detections],
    truth: Sequence[Detections],
    num_classes: int,
    score_threshold: float = 0.3,
) -> dict[str, np.ndarray]:
    """Matched detections (``det_image``, ``det_label``, ``det_score``, ``det_tp`` at each COCO
    IoU threshold: one entry per detection), and per image its boxes per class (``gt_count``)
    and its true positives, detections and boxes at ``score_threshold`` (``pr_counts``)."""
    rows: dict[str, list] = {"image": [], "label": [], "score": [], "tp": []}
    gt = np.zeros((len(truth), num_classes), dtype=np.int32)
    pr = np.zeros((len(truth), 3), dtype=np.int32)  # (N, [tp, predicted, true]) at the threshold
    for i, (p, t) in enumerate(zip(preds, truth, strict=True)):
        gt[i] = np.bincount(t.labels.numpy(), minlength=num_classes)[:num_classes]
        for k in torch.unique(p.labels).tolist():
            pk, tk = p.labels == k, t.labels == k
            order = torch.argsort(-p.scores[pk], stable=True)[:MAX_DETS]
            boxes, scores = p.boxes[pk][order], p.scores[pk][order]
            iou = box_iou(boxes.double(), t.boxes[tk].double()).numpy()  # (D_k, T_k)
            rows["tp"].append(np.stack([_match(iou, th) for th in IOU_THRESHOLDS], 1))
            rows["image"].append(np.full(len(scores), i, dtype=np.int32))
            rows["label"].append(np.full(len(scores), k, dtype=np.int16))
            rows["score"].append(scores.numpy().astype(np.float64))
        got = precision_recall([p], [t], score_threshold)
        n_pred = len(p.above(score_threshold))
        pr[i] = (round(got["precision"] * n_pred), n_pred, len(t))
    empty = {"image": np.int32, "label": np.int16, "score": np.float64, "tp": bool}
    out = {f"det_{k}": np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in rows.items()}
    if not rows["tp"]:
        out["det_tp"] = out["det_tp"].reshape(0, len(IOU_THRESHOLDS))
    return {**out, "gt_count": gt, "pr_counts": pr}


def _map(records: Records, weights: np.ndarray, thresholds: slice) -> np.ndarray:
    tp = np.asarray(records["det_tp"])[:, thresholds]
    ap = [
        weighted_ap(
            records["det_image"], records["det_label"], records["det_score"], tp[:, t],
            records["gt_count"], weights,
        )
        for t in range(tp.shape[1])
    ]  # fmt: skip
    return np.mean(ap, axis=0)


DETECTION_STATISTICS: Mapping = {
    "map50": lambda r, w: _map(r, w, slice(0, 1)),
    "map": lambda r, w: _map(r, w, slice(None)),
    "precision": lambda r, w: np.nan_to_num(
        weighted_ratio(r["pr_counts"][:, 0], r["pr_counts"][:, 1], w)
    ),
    "recall": lambda r, w: np.nan_to_num(
        weighted_ratio(r["pr_counts"][:, 0], r["pr_counts"][:, 2], w)
    ),
}
