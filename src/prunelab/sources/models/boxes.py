"""What a detector returns, and box geometry in pure torch: boxes are ``(x1, y1, x2, y2)`` in
pixels (xyxy), ``x2 > x1``.

>>> d = Detections(torch.tensor([[0., 0., 10., 10.]]), torch.ones(1), torch.zeros(1).long())
>>> len(d.above(0.5))
1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Detections:
    """One image's boxes (K, 4) xyxy, scores (K,) and integer labels (K,).

    Ground truth is a ``Detections`` whose scores are all 1.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        k = self.boxes.shape[0]
        if self.boxes.shape != (k, 4) or self.scores.shape != (k,) or self.labels.shape != (k,):
            raise PrunelabError(
                f"detections need boxes (K, 4), scores (K,), labels (K,); got "
                f"{tuple(self.boxes.shape)}, {tuple(self.scores.shape)}, {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def above(self, threshold: float) -> Detections:
        """Only the detections scoring at least ``threshold``."""
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (K, 4) xyxy boxes; degenerate boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU (N, M) of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4).

    >>> box_iou(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([[5., 0., 15., 10.]]))
    tensor([[0.3333]])
    """
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(a.dtype).tiny)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds
    ``iou_threshold``.

    >>> b = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.], [20., 20., 30., 30.]])
    >>> nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    [0, 2]
    """
    order = scores.argsort(descending=True)
    boxes = boxes[order]  # (K, 4) in score order
    suppress = (box_iou(boxes, boxes) > iou_threshold).numpy()  # (K, K), memory O(K^2)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):  # numpy rows: cheap even for a thousand candidates
        if alive[i]:
            keep.append(i)
            alive[i + 1 :] &= ~suppress[i, i + 1 :]
    return order[torch.tensor(keep, dtype=torch.long)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other.

    Each class is shifted to its own region of the plane (offset larger than any coordinate),
    so one :func:`nms` call serves all classes.

    >>> b = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.]])
    >>> batched_nms(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist()
    [0, 1]
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)  # (K, 1)
    return nms(boxes + offset, scores, iou_threshold)
