"""Seeded, labelled detection scenes built from real objects (Fashion-MNIST items or digits).

Each scene is a blank canvas with a few objects pasted at several scales, possibly
overlapping (pixel-wise maximum). A box is the tight box of the object's own non-zero
pixels as pasted, in pixel-edge xyxy coordinates (a pixel at column ``c`` spans
``[c, c+1)``), and its label is the object's class.

>>> s = make_scenes(torch.ones(2, 4, 4), torch.tensor([0, 1]), 3, canvas=16, scales=(1.0, 1.0),
...                 generator=torch.Generator().manual_seed(0))
>>> s.images.shape, all(((b[:, 2:] - b[:, :2]) == 4).all() for b in s.boxes)
(torch.Size([3, 1, 16, 16]), True)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.nn import functional as F

from prunelab.errors import PrunelabError
from prunelab.sources.data.base import DATASETS
from prunelab.sources.data.detection import DetectionBundle, DetectionSet
from prunelab.sources.data.fashion_mnist import CLASSES, DEFAULT_DIR, FILES, _find, read_idx


def tight_box(obj: Tensor) -> Tensor:
    """xyxy pixel-edge box (4,) of the non-zero pixels of a 2-D image.

    >>> tight_box(torch.tensor([[0., 0., 0.], [0., 1., 1.], [0., 0., 0.]])).tolist()
    [1.0, 1.0, 3.0, 2.0]
    """
    rows, cols = obj.any(1).nonzero().flatten(), obj.any(0).nonzero().flatten()
    if rows.numel() == 0:
        raise PrunelabError("object has no non-zero pixels")
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def _crop_scaled(obj: Tensor, scale: float) -> Tensor:
    """The object resized by ``scale`` (bilinear) and cropped to its non-zero pixels."""
    h, w = obj.shape
    size = (max(2, round(h * scale)), max(2, round(w * scale)))
    out = F.interpolate(obj[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    out = out.clamp(0, 1) * (out > 0.02)  # drop interpolation's faint fringe
    x1, y1, x2, y2 = tight_box(out).long().tolist()
    return out[y1:y2, x1:x2]


def _iou_max(box: Tensor, boxes: list[Tensor]) -> float:
    """Largest IoU of one xyxy box (4,) with any of ``boxes`` (0 when there are none)."""
    if not boxes:
        return 0.0
    others = torch.stack(boxes)  # (K, 4)
    wh = (torch.minimum(others[:, 2:], box[2:]) - torch.maximum(others[:, :2], box[:2])).clamp(0)
    inter = wh.prod(1)  # (K,)
    area = (box[2:] - box[:2]).prod() + (others[:, 2:] - others[:, :2]).prod(1)
    return float((inter / (area - inter)).max())


def _place(
    canvas: int, shape: tuple[int, int], boxes: list[Tensor], max_iou: float, g: torch.Generator
) -> tuple[int, int] | None:
    """A top-left corner for an object of ``shape`` whose box overlaps earlier ones little."""
    h, w = shape
    for _ in range(20):
        y = int(torch.randint(0, canvas - h + 1, (1,), generator=g))
        x = int(torch.randint(0, canvas - w + 1, (1,), generator=g))
        box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        if _iou_max(box, boxes) <= max_iou:
            return x, y
    return None


def make_scenes(
    objects: Tensor,
    labels: Tensor,
    n: int,
    canvas: int = 64,
    per_image: tuple[int, int] = (1, 4),
    scales: tuple[float, float] = (0.6, 1.3),
    max_iou: float = 0.3,
    generator: torch.Generator | None = None,
) -> DetectionSet:
    """``n`` scenes of ``canvas`` x ``canvas`` pixels from ``objects`` (M, h, w) in [0, 1].

    Each scene gets between ``per_image[0]`` and ``per_image[1]`` objects, each scaled by a
    factor drawn uniformly from ``scales`` and placed where its box has IoU at most
    ``max_iou`` with the boxes already placed (objects that find no such place are skipped).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, canvas, canvas)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = int(torch.randint(per_image[0], per_image[1] + 1, (1,), generator=g))
        boxes: list[Tensor] = []
        cls: list[int] = []
        for j in torch.randint(0, objects.shape[0], (k,), generator=g).tolist():
            scale = scales[0] + (scales[1] - scales[0]) * float(torch.rand(1, generator=g))
            obj = _crop_scaled(objects[j], scale)[:canvas, :canvas]
            corner = _place(canvas, tuple(obj.shape), boxes, max_iou, g)
            if corner is None:
                continue
            x, y = corner
            region = images[i, 0, y : y + obj.shape[0], x : x + obj.shape[1]]
            torch.maximum(region, obj, out=region)
            boxes.append(tight_box(obj) + torch.tensor([x, y, x, y], dtype=torch.float32))
            cls.append(int(labels[j]))
        all_boxes.append(torch.stack(boxes) if boxes else torch.zeros(0, 4))
        all_labels.append(torch.tensor(cls, dtype=torch.long))
    return DetectionSet(images, tuple(all_boxes), tuple(all_labels))


SceneLoader = Callable[..., DetectionBundle]


def _bundle(
    name: str,
    train_objects: tuple[Tensor, Tensor],
    test_objects: tuple[Tensor, Tensor],
    sizes: tuple[int, int, int],
    canvas: int,
    classes: tuple[str, ...],
    seed: int,
    **kw: object,
) -> DetectionBundle:
    g = torch.Generator().manual_seed(seed)
    n_train, n_val, n_test = sizes
    train = make_scenes(*train_objects, n_train, canvas, generator=g, **kw)
    val = make_scenes(*train_objects, n_val, canvas, generator=g, **kw)
    test = make_scenes(*test_objects, n_test, canvas, generator=g, **kw)
    return DetectionBundle(name, train, val, test, classes)


@DATASETS.register("fashion-scenes")
def load_fashion_scenes(
    n_train: int = 6000,
    n_val: int = 500,
    n_test: int = 1000,
    canvas: int = 64,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> DetectionBundle:
    """Fashion-MNIST items on ``canvas``-sized scenes; test scenes use only test-set items.

    Needs the Debian package ``dataset-fashion-mnist`` (or ``data_dir`` with its IDX files).
    """
    directory = Path(data_dir) if data_dir is not None else DEFAULT_DIR

    def part(split: str) -> tuple[Tensor, Tensor]:
        x = read_idx(_find(directory, FILES[f"{split}_x"]))  # (M, 28, 28) uint8
        y = read_idx(_find(directory, FILES[f"{split}_y"]))  # (M,)
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))

    sizes = (n_train, n_val, n_test)
    return _bundle("fashion-scenes", part("train"), part("test"), sizes, canvas, CLASSES, seed)


@DATASETS.register("digit-scenes")
def load_digit_scenes(
    n_train: int = 400, n_val: int = 50, n_test: int = 100, canvas: int = 32, seed: int = 0
) -> DetectionBundle:
    """scikit-learn's 8x8 digits (upsampled to 16x16) on small scenes: for tests, no files."""
    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0  # (M, 1, 8, 8)
    x = F.interpolate(x, scale_factor=2, mode="nearest")[:, 0]  # (M, 16, 16)
    y = torch.tensor(raw.target, dtype=torch.long)
    cut = 1400  # items 0..1399 build train/val scenes, the rest test scenes
    classes = tuple(str(d) for d in range(10))
    sizes = (n_train, n_val, n_test)
    return _bundle(
        "digit-scenes", (x[:cut], y[:cut]), (x[cut:], y[cut:]), sizes, canvas, classes, seed,
        scales=(0.7, 1.2), per_image=(1, 3),
    )  # fmt: skip


def load_scenes(name: str, **kwargs: object) -> DetectionBundle:
    """Build a registered scene set by name.

    >>> load_scenes("digit-scenes", n_train=4, n_val=2, n_test=2).num_classes
    10
    """
    bundle = DATASETS.get(name)(**kwargs)
    if not isinstance(bundle, DetectionBundle):
        raise PrunelabError(f"dataset '{name}' is not a scene set (boxes per image)")
    return bundle
