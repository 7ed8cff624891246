"""A small one-stage anchor-free detector (FCOS-style, one output level) for the scene sets.

Backbone: four conv-BN-ReLU stages (strides 1, 2, 2, 2). Neck: the stride-8 map is upsampled
and concatenated with the stride-4 map (a two-scale fusion), then mixed. Head: separate class
and box branches reading the same neck output.

It follows torchvision's detector convention, the contract every detector in prunelab follows
(:mod:`prunelab.tasks.detection`): in eval mode ``model(images)`` returns one dict per image
with ``boxes`` (K, 4) xyxy pixels, ``labels`` (K,) and ``scores`` (K,); in train mode
``model(images, targets)`` returns a dict of losses. The decoding (:func:`detections`) is
marked with ``torch.fx.wrap``, so ``torch.fx`` traces the forward with decoding as one opaque
call and channel surgery cuts through backbone, neck and head. :meth:`TinyDetector.raw` gives
the raw maps.

>>> m = TinyDetector(1, 10, width=8).eval()
>>> cls, reg = m.raw(torch.zeros(2, 1, 32, 32))
>>> cls.shape, reg.shape
(torch.Size([2, 10, 8, 8]), torch.Size([2, 4, 8, 8]))
>>> sorted(m(torch.zeros(2, 1, 32, 32))[0])
['boxes', 'labels', 'scores']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F

from prunelab.errors import PrunelabError
from prunelab.sources.models.boxes import batched_nms
from prunelab.sources.models.zoo import MODELS

STRIDE = 4  # output grid cell size in input pixels


def conv_bn(c_in: int, c_out: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    """conv(k) - BatchNorm - ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class TinyDetector(nn.Module):
    """Backbone -> two-scale neck (upsample + concat) -> class and box branches (stride 4)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w)  # stride 1
        self.stage1 = nn.Sequential(conv_bn(w, 2 * w, 2), conv_bn(2 * w, 2 * w))  # stride 2
        self.stage2 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))  # 4
        self.stage3 = nn.Sequential(conv_bn(4 * w, 8 * w, 2), conv_bn(8 * w, 8 * w))  # 8
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(conv_bn(12 * w, 4 * w, k=1), conv_bn(4 * w, 4 * w))
        self.cls_branch = conv_bn(4 * w, 4 * w)
        self.box_branch = conv_bn(4 * w, 4 * w)
        self.cls_out = nn.Conv2d(4 * w, num_classes, 1)
        self.box_out = nn.Conv2d(4 * w, 4, 1)
        nn.init.constant_(self.cls_out.bias, -4.6)  # prior 1 % foreground (focal-loss init)

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (B, K, H/4, W/4) and raw box distances (B, 4, H/4, W/4)."""
        c2 = self.stage2(self.stage1(self.stem(x)))  # (B, 4w, H/4, W/4)
        c3 = self.stage3(c2)  # (B, 8w, H/8, W/8)
        p = self.fuse(torch.cat([self.up(c3), c2], dim=1))  # (B, 12w -> 4w, H/4, W/4)
        cls = self.cls_out(self.cls_branch(p))  # (B, K, H/4, W/4) class logits
        reg = self.box_out(self.box_branch(p))  # (B, 4, H/4, W/4) raw l, t, r, b distances
        return cls, reg

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """Eval: detections per image; train: the losses against ``targets`` (torchvision's
        convention: a dict per image with ``boxes`` (K, 4) xyxy and ``labels`` (K,))."""
        cls, reg = self.raw(images)
        if self.training:
            if targets is None:
                raise PrunelabError("in train mode the detector needs targets (boxes, labels)")
            return detection_losses((cls, reg), targets)
        return detections(cls, reg)


@MODELS.register("detector-tiny")
def detector_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The scene detector at width 16 (415,678 parameters for 1-channel inputs, 10 classes)."""
    return TinyDetector(input_shape[0], num_classes, width=16)


def cell_centers(h: int, w: int, stride: int = STRIDE) -> Tensor:
    """(h*w, 2) pixel centres (x, y) of the output grid cells, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride  # (h*w, 2)


def decode_boxes(reg: Tensor, centers: Tensor, stride: int = STRIDE) -> Tensor:
    """Boxes (..., 4) xyxy from raw distances (..., 4) at cell ``centers`` (..., 2)."""
    ltrb = F.softplus(reg) * stride  # (..., 4) non-negative distances in pixels
    return torch.cat([centers - ltrb[..., :2], centers + ltrb[..., 2:]], -1)


def assign(
    boxes: Tensor, labels: Tensor, centers: Tensor, num_classes: int, radius: float = 1.5
) -> tuple[Tensor, Tensor]:
    """FCOS centre sampling for one image: per cell a one-hot class target (P, K) and its box
    (P, 4). A cell is positive for a box when its centre lies inside the box and within
    ``radius`` cells of the box centre; a cell claimed by several boxes takes the smallest.
    """
    p = centers.shape[0]
    cls_t, box_t = torch.zeros(p, num_classes), torch.zeros(p, 4)
    if boxes.shape[0] == 0:
        return cls_t, box_t
    cx, cy = centers[:, None, 0], centers[:, None, 1]  # (P, 1)
    inside = (cx > boxes[:, 0]) & (cx < boxes[:, 2]) & (cy > boxes[:, 1]) & (cy < boxes[:, 3])
    mid = (boxes[:, :2] + boxes[:, 2:]) / 2  # (G, 2)
    near = ((centers[:, None, :] - mid[None]).abs() < radius * STRIDE).all(-1)  # (P, G)
    area = ((boxes[:, 2:] - boxes[:, :2]).prod(1))[None].expand(p, -1)  # (P, G)
    area = torch.where(inside & near, area, torch.full_like(area, float("inf")))
    best, idx = area.min(1)  # (P,)
    pos = best.isfinite()
    cls_t[pos, labels[idx[pos]]] = 1.0
    box_t[pos] = boxes[idx[pos]]
    return cls_t, box_t


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - generalised IoU of matched xyxy boxes (N, 4), per pair (N,)."""
    lt, rb = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_p, area_t = (pred[:, 2:] - pred[:, :2]).prod(1), (target[:, 2:] - target[:, :2]).prod(1)
    union = area_p + area_t - inter
    hull = torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])
    hull_area = hull.prod(1)
    giou = inter / union.clamp(min=1e-6) - (hull_area - union) / hull_area.clamp(min=1e-6)
    return 1 - giou


def detection_losses(
    outputs: tuple[Tensor, Tensor], targets: Sequence[dict[str, Tensor]]
) -> dict[str, Tensor]:
    """Sigmoid focal loss on classes (``classification``) and twice the GIoU loss on the
    positives' boxes (``box``), each per positive cell."""
    boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
    cls, reg = outputs
    b, k, h, w = cls.shape
    centers = cell_centers(h, w)
    targets = [assign(bx, lb, centers, k) for bx, lb in zip(boxes, labels)]
    cls_t = torch.stack([t[0] for t in targets])  # (B, P, K)
    box_t = torch.stack([t[1] for t in targets])  # (B, P, 4)
    cls_p = cls.flatten(2).transpose(1, 2)  # (B, K, H, W) -> (B, P, K)
    reg_p = reg.flatten(2).transpose(1, 2)  # (B, 4, H, W) -> (B, P, 4)
    pos = cls_t.sum(-1) > 0  # (B, P)
    n_pos = max(int(pos.sum()), 1)
    focal = focal_loss(cls_p, cls_t).sum() / n_pos
    pred_boxes = decode_boxes(reg_p[pos], centers.expand(b, -1, -1)[pos])  # (n_pos, 4)
    box = giou_loss(pred_boxes, box_t[pos]).sum() / n_pos
    return {"classification": focal, "box": 2.0 * box}


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017, gamma 2), elementwise."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return a_t * ce * (1 - p_t) ** 2


@torch.no_grad()
def detections(
    cls: Tensor,
    reg: Tensor,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_det: int = 100,
) -> list[dict[str, Tensor]]:
    """Per-image detections (torchvision's form) from the raw maps: class scores above
    ``score_threshold``, class-wise NMS, at most ``max_det``."""
    b, k, h, w = cls.shape
    centers = cell_centers(h, w)
    scores = cls.sigmoid().flatten(2).transpose(1, 2)  # (B, P, K)
    boxes = decode_boxes(reg.flatten(2).transpose(1, 2), centers)  # (B, P, 4)
    out = []
    for i in range(b):
        cell, label = (scores[i] > score_threshold).nonzero(as_tuple=True)
        s = scores[i, cell, label]
        top = s.topk(min(len(s), 10 * max_det)).indices
        cell, label, s = cell[top], label[top], s[top]
        keep = batched_nms(boxes[i, cell], s, label, iou_threshold)[:max_det]
        out.append({"boxes": boxes[i, cell[keep]], "labels": label[keep], "scores": s[keep]})
    return out


torch.fx.wrap("detections")  # traced as one call: data-dependent decoding stays opaque


def distillation_loss(
    student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], min_score: float = 0.1
) -> Tensor:
    """Match a (dense) teacher detector's raw outputs; add it to :func:`detection_loss`.

    Classes: the Bernoulli KL from the teacher's per-class probabilities to the student's,
    summed over cells and classes. Boxes: GIoU between the decoded student and teacher boxes on
    cells where the teacher scores some class ``>= min_score``, weighted by that score. Both
    are divided by the number of such cells (as the detection loss is by its positives).

    >>> out = (torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, 4))
    >>> float(distillation_loss(out, out))  # identical outputs: nothing to learn
    0.0
    """
    cls_s, reg_s = student
    cls_t, reg_t = teacher
    b, k, h, w = cls_s.shape
    p_t = cls_t.sigmoid()
    ent = F.binary_cross_entropy(p_t, p_t, reduction="none")  # teacher's own entropy
    kl = F.binary_cross_entropy_with_logits(cls_s, p_t, reduction="none") - ent  # (B, K, H, W)
    weight = p_t.amax(1).flatten(1)  # (B, H*W) teacher's best class score per cell
    keep = weight >= min_score  # (B, P)
    n = max(int(keep.sum()), 1)
    centers = cell_centers(h, w).expand(b, -1, -1)[keep]  # (n, 2)
    box_s = decode_boxes(reg_s.flatten(2).transpose(1, 2)[keep], centers)  # (n, 4)
    box_t = decode_boxes(reg_t.flatten(2).transpose(1, 2)[keep], centers)  # (n, 4)
    box = (weight[keep] * giou_loss(box_s, box_t)).sum()
    return (kl.clamp(min=0).sum() + box) / n
