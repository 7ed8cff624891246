"""MTCNN face detector (Zhang et al. 2016) with the weights shipped in ``facenet-pytorch`` 2.6.0.

The P-, R- and O-Net modules here hold the same parameters as ``facenet_pytorch``'s (whose
package import needs torchvision, unavailable here), loaded from its plain state dicts with
``weights_only=True``. One change makes them prunable: facenet flattens the last conv map
in (W, H, C) order through a ``permute``; these nets flatten in (C, H, W) order and permute
the first Linear's input columns to match when loading, so the function is identical and
``torch.fx`` sees a plain ``flatten``. Forwards return raw logits (softmax lives in
:func:`detect_faces`). The cascade (image pyramid, P-Net proposals, R-Net and O-Net
refinement, NMS) follows facenet's ``detect_face`` with prunelab's pure-torch NMS; the last
NMS uses IoU (facenet: intersection over the smaller box).

:class:`MTCNN` is the whole cascade as one detector following torchvision's convention (the
contract of :mod:`prunelab.tasks.detector_contract`): ``model(images)`` with images
(B, 3, H, W) in [0, 1] returns one dict of faces (label 0) per image. It has no training loss,
so a sweep measures it one-shot (``[finetune] epochs = 0``); its forward loops over an image
pyramid, so ``torch.fx`` cannot trace it and channel pruning refuses it.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunelab.errors import PrunelabError
from prunelab.sources.models.boxes import Detections, nms


def _block(c_in: int, c_out: int, k: int) -> tuple[nn.Conv2d, nn.PReLU]:
    return nn.Conv2d(c_in, c_out, k), nn.PReLU(c_out)


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(10, 16, 3)
        self.conv3, self.prelu3 = _block(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))  # (B, 32, h, w)
        return self.conv4_2(x), self.conv4_1(x)  # box offsets (B, 4, h, w), face logits (B, 2)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _block(48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).flatten(1)  # (B, 64, 3, 3) -> (B, 576), (C, H, W) order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), self.dense5_1(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: box offsets, five landmarks, face logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _block(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _block(64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).flatten(1)  # (B, 128, 3, 3) -> (B, 1152), (C, H, W)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x)


@dataclass
class Cascade:
    """The three MTCNN stages."""

    pnet: nn.Module
    rnet: nn.Module
    onet: nn.Module


class MTCNN(nn.Module):
    """P-, R- and O-Net as one face detector: eval mode returns faces per image.

    >>> out = MTCNN().eval()(torch.zeros(2, 3, 24, 24))  # random weights
    >>> len(out), sorted(out[0])
    (2, ['boxes', 'labels', 'scores'])
    """

    def __init__(self, cascade: Cascade | None = None, min_size: float = 20.0) -> None:
        super().__init__()
        nets = cascade if cascade is not None else Cascade(PNet(), RNet(), ONet())
        self.pnet, self.rnet, self.onet = nets.pnet, nets.rnet, nets.onet
        self.min_size = min_size

    def forward(self, images: Tensor, targets: object = None) -> list[dict[str, Tensor]]:
        """Faces in each image of ``images`` (B, 3, H, W), values in [0, 1]."""
        found = [detect_faces(img * 255.0, self, self.min_size) for img in images]
        return [{"boxes": d.boxes, "labels": d.labels, "scores": d.scores} for d in found]


def _whc_to_chw(weight: Tensor, c: int, h: int, w: int) -> Tensor:
    """Linear weight columns from facenet's (W, H, C) flatten order to (C, H, W)."""
    out = weight.shape[0]
    return weight.view(out, w, h, c).permute(0, 3, 2, 1).reshape(out, c * h * w)  # (out, CHW)


def load_mtcnn(weights_dir: str | Path | None = None) -> Cascade:
    """P-, R- and O-Net with facenet-pytorch's weights (``facenet_pytorch/data/*.pt``).

    ``weights_dir`` defaults to the installed wheel's ``data`` folder, found without
    importing the package (its import needs torchvision).
    """
    if weights_dir is None:
        spec = importlib.util.find_spec("facenet_pytorch")
        if spec is None or spec.origin is None:
            raise PrunelabError(
                "MTCNN weights need the facenet-pytorch wheel: "
                "pip install --no-deps facenet-pytorch==2.6.0"
            )
        weights_dir = Path(spec.origin).parent / "data"
    nets = Cascade(PNet(), RNet(), ONet())
    for name, net, fc, chw in (
        ("pnet", nets.pnet, None, None),
        ("rnet", nets.rnet, "dense4.weight", (64, 3, 3)),
        ("onet", nets.onet, "dense5.weight", (128, 3, 3)),
    ):
        state = torch.load(Path(weights_dir) / f"{name}.pt", weights_only=True)
        if fc is not None:
            state[fc] = _whc_to_chw(state[fc], *chw)
        net.load_state_dict(state)
        net.eval()
    return nets


def _square(boxes: Tensor) -> Tensor:
    """Grow (K, 4) boxes to squares around their centres (facenet's ``rerec``)."""
    wh = boxes[:, 2:] - boxes[:, :2]  # (K, 2)
    side = wh.max(1, keepdim=True).values  # (K, 1)
    start = boxes[:, :2] + wh / 2 - side / 2
    return torch.cat([start, start + side], 1)


def _regress(boxes: Tensor, reg: Tensor, plus_one: bool) -> Tensor:
    """Apply MTCNN's box offsets (K, 4), scaled by box width/height."""
    wh = boxes[:, 2:] - boxes[:, :2] + (1 if plus_one else 0)  # (K, 2)
    return boxes + reg * wh.repeat(1, 2)


def crop_patches(img: Tensor, boxes: Tensor, size: int) -> Tensor:
    """(K, 3, size, size) normalised crops of the integer-clamped boxes (facenet's ``pad``)."""
    _, h, w = img.shape
    out = []
    for x1, y1, x2, y2 in boxes.trunc().long().tolist():
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if x2 <= x1 - 1 or y2 <= y1 - 1:
            x1, y1, x2, y2 = 1, 1, 2, 2  # degenerate: a token crop that will score low
        crop = img[None, :, y1 - 1 : y2, x1 - 1 : x2]  # (1, 3, h', w')
        out.append(F.interpolate(crop, size=(size, size), mode="area"))
    return (torch.cat(out) - 127.5) * 0.0078125


def propose(
    img: Tensor, pnet: nn.Module, min_size: float, factor: float, th: float, max_proposals: int
) -> Tensor:
    """P-Net over the image pyramid: (K, 5) squared, regressed boxes and scores.

    At most ``max_proposals`` per scale enter NMS, the highest-scoring (facenet keeps all).
    """
    _, h, w = img.shape
    scale, found = 12.0 / min_size, []
    while min(h, w) * scale >= 12:
        x = F.interpolate(img[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, logits = pnet((x - 127.5) * 0.0078125)
        prob = logits.softmax(1)[0, 1]  # (h', w')
        yx = (prob >= th).nonzero().float()  # (K, 2)
        q1 = ((2 * yx.flip(1) + 1) / scale).floor()
        q2 = ((2 * yx.flip(1) + 12) / scale).floor()
        score = prob[prob >= th]
        cand = torch.cat([q1, q2, score[:, None], reg[0][:, prob >= th].T], 1)  # (K, 9)
        cand = cand[score.argsort(descending=True)[:max_proposals]]
        found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        scale *= factor
    cand = torch.cat(found) if found else torch.zeros(0, 9)
    cand = cand[cand[:, 4].argsort(descending=True)[:max_proposals]]
    cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
    return torch.cat([_square(_regress(cand[:, :4], cand[:, 5:], False)), cand[:, 4:5]], 1)


@torch.no_grad()
def detect_faces(
    img: Tensor,
    nets: Cascade | MTCNN,
    min_size: float = 20.0,
    factor: float = 0.709,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    max_proposals: int = 2000,
) -> Detections:
    """Faces in one RGB image (3, H, W) with values 0..255; label 0, score = O-Net's.

    >>> load_mtcnn  # doctest: +ELLIPSIS
    <function load_mtcnn at ...>
    """
    boxes = propose(img, nets.pnet, min_size, factor, thresholds[0], max_proposals)[:, :4]
    for net, size, th in ((nets.rnet, 24, thresholds[1]), (nets.onet, 48, thresholds[2])):
        if len(boxes) == 0:
            break
        out = net(crop_patches(img, boxes, size))
        reg, prob = out[0], out[-1].softmax(1)[:, 1]  # (K, 4), (K,)
        keep = prob > th
        boxes, reg, prob = boxes[keep], reg[keep], prob[keep]
        if net is nets.rnet:
            keep = nms(boxes, prob, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep], True))
        else:
            boxes = _regress(boxes, reg, True)
            keep = nms(boxes, prob, 0.7)
            boxes, prob = boxes[keep], prob[keep]
    if len(boxes) == 0 or not math.isfinite(float(boxes.sum())):
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return Detections(boxes, prob, torch.zeros(len(boxes), dtype=torch.long))
