"""Detection metrics: box ops in pure torch and COCO-style mAP through ``pycocotools``.

Boxes are ``(x1, y1, x2, y2)`` in pixels (xyxy), ``x2 > x1``. mAP comes from the kept COCO
evaluator (101-point interpolated precision, IoU thresholds 0.50:0.05:0.95), never from a
hand-written average precision. *Fidelity* scores a pruned detector against the dense
detector's own detections used as ground truth, so it needs no labels.

>>> t = Detections(torch.tensor([[0., 0., 10., 10.]]), torch.ones(1), torch.zeros(1).long())
>>> coco_map([t], [t], num_classes=1)["map50"]
1.0
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.sources.models.boxes import Detections, box_iou


def _coco_gt(truth: Sequence[Detections], num_classes: int) -> dict:
    images = [{"id": i + 1} for i in range(len(truth))]
    anns = []
    for i, t in enumerate(truth):
        for box, label in zip(t.boxes.tolist(), t.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def _categories(num_classes: int, *sets: Sequence[Detections]) -> int:
    """Enough categories for ``num_classes`` and every label any of ``sets`` uses."""
    top = max((int(d.labels.max()) + 1 for s in sets for d in s if len(d)), default=0)
    return max(num_classes, top)


def _coco_dets(preds: Sequence[Detections]) -> np.ndarray:
    rows = []
    for i, p in enumerate(preds):
        b = p.boxes.detach().double()
        xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1)  # (K, 4)
        img = torch.full((len(p), 1), i + 1, dtype=torch.float64, device=b.device)
        cls = p.labels.double()[:, None] + 1  # COCO category ids start at 1
        rows.append(torch.cat([img, xywh, p.scores.double()[:, None], cls], 1))  # (K, 7)
    return torch.cat(rows).cpu().numpy() if rows else np.zeros((0, 7))  # (sum K, 7)


def coco_map(
    preds: Sequence[Detections], truth: Sequence[Detections], num_classes: int
) -> dict[str, float]:
    """COCO mAP@0.5 (``map50``) and mAP@0.5:0.95 (``map``) by ``pycocotools``' COCOeval.

    Up to 100 detections per image count (COCO's default). Categories without ground truth
    are left out of the mean, as in COCO; with no ground truth at all both are 0. Labels past
    ``num_classes`` are categories too (a detector may know more classes than the data).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(preds) != len(truth):
        raise PrunelabError(f"{len(preds)} predicted images but {len(truth)} ground-truth images")
    dets = _coco_dets(preds)
    if dets.shape[0] == 0 or sum(len(t) for t in truth) == 0:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = _coco_gt(truth, _categories(num_classes, preds, truth))
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where nothing is defined; round off its float summation noise
    return {
        "map50": round(max(float(ev.stats[1]), 0.0), 12),
        "map": round(max(float(ev.stats[0]), 0.0), 12),
    }


def precision_recall(
    preds: Sequence[Detections],
    truth: Sequence[Detections],
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Precision and recall of the detections scoring ``>= score_threshold``.

    Detections are matched greedily, highest score first, to the unmatched ground-truth box
    of the same label with the largest IoU (``>= iou_threshold``), as COCO matches.

    >>> t = Detections(torch.tensor([[0., 0., 10., 10.]]), torch.ones(1), torch.zeros(1).long())
    >>> precision_recall([t], [t])
    {'precision': 1.0, 'recall': 1.0}
    """
    tp = n_pred = n_true = 0
    for p, t in zip(preds, truth, strict=True):
        p = p.above(score_threshold)
        n_pred, n_true = n_pred + len(p), n_true + len(t)
        if len(p) == 0 or len(t) == 0:
            continue
        iou = box_iou(p.boxes.float(), t.boxes.float())  # (P, T)
        iou[p.labels[:, None] != t.labels[None, :]] = -1
        free = torch.ones(len(t), dtype=torch.bool, device=iou.device)
        for i in p.scores.argsort(descending=True).tolist():
            cand = torch.where(free, iou[i], torch.full_like(iou[i], -1))
            j = int(cand.argmax())
            if cand[j] >= iou_threshold:
                free[j], tp = False, tp + 1
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
    }


def fidelity(
    preds: Sequence[Detections], reference: Sequence[Detections], score_threshold: float = 0.3
) -> dict[str, float]:
    """``preds`` scored against ``reference`` (the dense detector's own detections scoring
    ``>= score_threshold``, taken as ground truth): ``fidelity_map50`` (1.0 when the pruned
    detector finds what the dense one found), ``fidelity_map`` (IoU 0.50:0.95) and
    ``fidelity_precision``/``fidelity_recall`` at the same score threshold. Needs no labels;
    all NaN when the dense detector found nothing to be faithful to.

    >>> t = Detections(torch.tensor([[0., 0., 10., 10.]]), torch.ones(1), torch.zeros(1).long())
    >>> fidelity([t], [t])["fidelity_map50"]
    1.0
    """
    truth = [r.above(score_threshold) for r in reference]
    if not any(len(t) for t in truth):
        return dict.fromkeys(FIDELITY, math.nan)
    truth = [Detections(t.boxes, torch.ones_like(t.scores), t.labels) for t in truth]
    m = coco_map(preds, truth, 0)
    pr = precision_recall(preds, truth, score_threshold)
    return dict(zip(FIDELITY, (m["map50"], m["map"], pr["precision"], pr["recall"])))


FIDELITY = ("fidelity_map50", "fidelity_map", "fidelity_precision", "fidelity_recall")


def detection_artifacts(
    preds: Sequence[Detections], n: int = 6, prefix: str = "det"
) -> dict[str, np.ndarray]:
    """The first ``n`` images' detections as store artefacts (what a report draws later).

    Per image ``i``: ``{prefix}_boxes/{i}`` float32 (K_i, 4) xyxy pixels, ``{prefix}_scores/{i}``
    float32 (K_i,), ``{prefix}_labels/{i}`` int64 (K_i,). Ground truth goes in with another
    prefix (``det_truth``; scores are then all 1). :func:`detections_from_artifacts` inverts it.

    >>> d = Detections(torch.tensor([[1., 2., 3., 4.]]), torch.tensor([0.5]), torch.tensor([7]))
    >>> sorted(detection_artifacts([d]))
    ['det_boxes/0', 'det_labels/0', 'det_scores/0']
    """
    out: dict[str, np.ndarray] = {}
    for i, d in enumerate(preds[:n]):
        out[f"{prefix}_boxes/{i}"] = d.boxes.detach().cpu().numpy().astype(np.float32)
        out[f"{prefix}_scores/{i}"] = d.scores.detach().cpu().numpy().astype(np.float32)
        out[f"{prefix}_labels/{i}"] = d.labels.detach().cpu().numpy().astype(np.int64)
    return out


def detections_from_artifacts(
    artifacts: Mapping[str, np.ndarray], prefix: str = "det"
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image, in index order, ``(boxes (K, 4), scores (K,), labels (K,))`` numpy arrays
    from :func:`detection_artifacts`' names; other artefacts are ignored.

    >>> d = Detections(torch.tensor([[1., 2., 3., 4.]]), torch.tensor([0.5]), torch.tensor([7]))
    >>> [x.tolist() for x in detections_from_artifacts(detection_artifacts([d]))[0]]
    [[[1.0, 2.0, 3.0, 4.0]], [0.5], [7]]
    """
    index: set[int] = set()
    for name in artifacts:
        head, _, i = name.rpartition("/")
        if head in (f"{prefix}_boxes", f"{prefix}_scores", f"{prefix}_labels") and i.isdigit():
            index.add(int(i))
    if index != set(range(len(index))):
        raise PrunelabError(f"'{prefix}' detection artefacts skip images: have {sorted(index)}")
    try:
        return [
            tuple(artifacts[f"{prefix}_{part}/{i}"] for part in ("boxes", "scores", "labels"))
            for i in range(len(index))
        ]
    except KeyError as e:
        raise PrunelabError(f"detection artefact {e} is missing") from None
