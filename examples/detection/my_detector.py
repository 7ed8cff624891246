"""Your detector: any nn.Module that follows torchvision's detector convention.

* eval mode: ``model(images)`` -> one dict per image: ``boxes`` (K, 4) x1 y1 x2 y2 pixels,
  ``labels`` (K,) class ids, ``scores`` (K,);
* train mode: ``model(images, targets)`` -> a dict of losses (``targets``: one dict per image
  with ``boxes`` and ``labels``) -- or return anything and name a loss function in the TOML
  (``[task] loss = "my_detector.py:detection_loss"``, see ``build_raw``).

This one is a stand-in: a tiny one-level CenterNet-style detector (a class heat map and box
sizes on a stride-4 grid; local maxima of the heat map are the detections, so no NMS). Its
post-processing is marked with ``torch.fx.wrap`` so prunelab can trace the forward and remove
whole channels; a detector that torch.fx cannot trace is still swept unstructured or N:M.
"""

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

STRIDE = 4


def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class CenterDetector(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 loss_inside: bool = True) -> None:  # fmt: skip
        super().__init__()
        w = width
        self.body = nn.Sequential(block(in_channels, w, 1), block(w, 2 * w, 2),
                                  block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1))  # fmt: skip
        self.heat = nn.Conv2d(4 * w, num_classes, 1)  # class logits per cell
        self.size = nn.Conv2d(4 * w, 4, 1)  # log distances to the box's left, top, right, bottom
        nn.init.constant_(self.heat.bias, -4.0)
        self.loss_inside = loss_inside

    def forward(self, images, targets=None):
        feat = self.body(images)
        heat, size = self.heat(feat), self.size(feat)
        if self.training:
            if not self.loss_inside:
                return heat, size  # the loss function named in the TOML computes the loss
            return detection_loss((heat, size), targets)
        return postprocess(heat, size)


def centers(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([xs, ys], -1).float() + 0.5) * STRIDE  # (h, w, 2) pixel centres


def detection_loss(outputs, targets):
    """Focal-style loss on the heat map at each box's centre cell, L1 on its log distances."""
    heat, size = outputs
    b, k, h, w = heat.shape
    want = torch.zeros_like(heat)
    dist = torch.zeros(b, 4, h, w)
    for i, t in enumerate(targets):
        for (x1, y1, x2, y2), c in zip(t["boxes"].tolist(), t["labels"].tolist()):
            cx = min(int((x1 + x2) / 2 / STRIDE), w - 1)
            cy = min(int((y1 + y2) / 2 / STRIDE), h - 1)
            want[i, c, cy, cx] = 1.0
            px, py = (cx + 0.5) * STRIDE, (cy + 0.5) * STRIDE
            d = torch.tensor([px - x1, py - y1, x2 - px, y2 - py]).clamp(min=0.5)
            dist[i, :, cy, cx] = d.log()
    p = heat.sigmoid()
    ce = F.binary_cross_entropy_with_logits(heat, want, reduction="none")
    focal = (ce * (want - p).abs() ** 2).sum() / want.sum().clamp(min=1)
    pos = want.amax(1, keepdim=True).expand_as(size) > 0  # (B, 4, h, w)
    box = F.l1_loss(size[pos], dist[pos]) if pos.any() else size.sum() * 0
    return {"heat": focal, "size": box}


@torch.no_grad()
def postprocess(heat, size, threshold: float = 0.05, top: int = 50):
    """Local maxima of the heat map above ``threshold``, with their boxes."""
    b, k, h, w = heat.shape
    p = heat.sigmoid()
    peak = p * (F.max_pool2d(p, 3, 1, 1) == p)  # keep 3x3 maxima only (no NMS needed)
    grid = centers(h, w)
    out = []
    for i in range(b):
        scores, idx = peak[i].flatten().topk(min(top, k * h * w))
        keep = scores > threshold
        scores, idx = scores[keep], idx[keep]
        cls, cell = idx // (h * w), idx % (h * w)
        xy = grid.reshape(-1, 2)[cell]  # (n, 2)
        d = size[i].flatten(1).T[cell].exp()  # (n, 4) distances in pixels
        boxes = torch.cat([xy - d[:, :2], xy + d[:, 2:]], 1)
        out.append({"boxes": boxes, "labels": cls, "scores": scores})
    return out


torch.fx.wrap("postprocess")  # prunelab traces the forward; decoding stays one opaque call


def build() -> nn.Module:
    """The detector that computes its own losses in train mode (torchvision's convention)."""
    return CenterDetector(in_channels=1)


def build_raw() -> nn.Module:
    """The same network returning raw maps in train mode: pair it with ``detection_loss``."""
    return CenterDetector(in_channels=1, loss_inside=False)
