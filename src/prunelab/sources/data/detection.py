"""Detection data: images with boxes and labels per image, in train/val/test splits.

Images are (N, C, H, W), float in [0, 1] or uint8 in 0..255 (read photos stay uint8: a quarter
of the memory); :meth:`DetectionSet.pixels` gives float in [0, 1] either way. Boxes are
``(x1, y1, x2, y2)`` pixels of the stored image (xyxy); labels are the class ids the detector
predicts (a COCO file's own ``category_id``). A bundle without labels (``labelled=False``)
holds no boxes: its detector is measured against the dense detector's own detections.

>>> s = DetectionSet(torch.zeros(2, 1, 8, 8), (torch.zeros(0, 4),) * 2,
...                  (torch.zeros(0, dtype=torch.long),) * 2)
>>> len(s.take([1])), s.targets()[0]["boxes"].shape
(1, torch.Size([0, 4]))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class DetectionSet:
    """Images (N, C, H, W) with per-image boxes (K_i, 4) xyxy and integer labels (K_i,)."""

    images: Tensor
    boxes: tuple[Tensor, ...]
    labels: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4 or len(self.boxes) != n or len(self.labels) != n:
            raise PrunelabError(
                f"detection data needs images (N, C, H, W) and N box/label tensors; got "
                f"{tuple(self.images.shape)}, {len(self.boxes)} boxes, {len(self.labels)} labels"
            )
        if n == 0:
            raise PrunelabError("empty detection split: no images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pixels(self) -> Tensor:
        """The images as float in [0, 1] (what a detector is given)."""
        if self.images.dtype == torch.uint8:
            return self.images.float() / 255.0
        return self.images

    def take(self, idx: Sequence[int] | Tensor) -> DetectionSet:
        """The images at positions ``idx``, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return DetectionSet(
            self.images[idx],
            tuple(self.boxes[i] for i in idx.tolist()),
            tuple(self.labels[i] for i in idx.tolist()),
        )

    def subset(self, n: int | None) -> DetectionSet:
        """The first ``n`` images (all when ``n`` is None)."""
        return self if n is None or n >= len(self) else self.take(range(n))

    def with_targets(self, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> DetectionSet:
        """The same images with other boxes and labels (e.g. a teacher's detections)."""
        return DetectionSet(self.images, tuple(boxes), tuple(labels))

    def targets(self) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (K, 4) float32, "labels": (K,) int64}`` (torchvision's form)."""
        return [
            {"boxes": b.float(), "labels": y.long()} for b, y in zip(self.boxes, self.labels)
        ]

    def fingerprint(self) -> str:
        """A short content hash (images, boxes, labels) for caches and run records."""
        h = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        for b, y in zip(self.boxes, self.labels):
            h.update(b.contiguous().numpy().tobytes())
            h.update(y.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DetectionBundle:
    """Train, validation and test detection sets; ``classes[i]`` names label ``i``.

    ``labelled=False``: the sets hold images only (no boxes); the task then measures fidelity
    to the dense detector and recovers from its detections.
    """

    name: str
    train: DetectionSet
    val: DetectionSet
    test: DetectionSet
    classes: tuple[str, ...]
    labelled: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    def fingerprint(self) -> str:
        parts = "".join(s.fingerprint() for s in (self.train, self.val, self.test))
        parts += "" if self.labelled else "/unlabelled"  # labelled keys as before this flag
        return hashlib.sha256(parts.encode()).hexdigest()[:16]
