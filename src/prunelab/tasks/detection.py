"""The ``detection`` task: boxes and class labels per image, the detector's own loss, COCO mAP.

A split is a :class:`~prunelab.sources.data.scenes.SceneSet`; a batch is a smaller ``SceneSet``.
Predictions are per-image :class:`~prunelab.measure.detection.Detections`; the dense
model's predictions are the reference for ``fidelity_map50`` (no labels needed).

>>> from prunelab.sources.data.scenes import load_scenes
>>> scenes = load_scenes("digit-scenes", n_train=8, n_val=4, n_test=4)
>>> task = DetectionTask(scenes.num_classes)
>>> from prunelab.sources.models.zoo import build_model
>>> model = build_model("detector-tiny", scenes.input_shape, scenes.num_classes)
>>> sorted(task.evaluate(model, scenes.val, None))
['fidelity_map50', 'loss', 'map', 'map50', 'precision', 'recall']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.detection import (
    coco_map,
    detection_artifacts,
    fidelity_map50,
    precision_recall,
)
from prunelab.measure.detection_records import DETECTION_STATISTICS, detection_records
from prunelab.sources.data.scenes import SceneBundle, SceneSet
from prunelab.sources.models import detector as _detector
from prunelab.sources.models.boxes import Detections
from prunelab.tasks.base import MetricInfo, Task

log = logging.getLogger(__name__)
GRID_IMAGES = 6  # test scenes whose detections every cell stores for the report

METRICS = (
    MetricInfo("map50", True, "COCO mAP at IoU 0.5", fraction=True, dead=0.0),
    MetricInfo("map", True, "COCO mAP averaged over IoU 0.50:0.05:0.95", True, 0.0),
    MetricInfo("precision", True, "precision of detections scoring >= the score threshold", True),
    MetricInfo("recall", True, "recall of detections scoring >= the score threshold", True, 0.0),
    MetricInfo(
        "fidelity_map50", True, "mAP@0.5 against the dense detector's detections", True, 0.0
    ),
    MetricInfo("loss", False, "the detector's training loss (focal + GIoU), mean per batch"),
)


def truth_of(split: SceneSet) -> list[Detections]:
    """The split's labelled boxes as ground-truth detections (score 1)."""
    pairs = zip(split.boxes, split.labels)
    return [Detections(b, torch.ones(len(b), device=b.device), y) for b, y in pairs]


class DetectionTask(Task):
    """Object detection with a model whose forward returns ``(class_logits, box_regression)``.

    ``score_threshold`` fixes the operating point of precision/recall and which dense
    detections count as the fidelity reference.
    """

    kind: ClassVar[str] = "detection"
    fidelity: ClassVar[str] = "fidelity_map50"
    tolerance_points: ClassVar[float] = 1.0  # one point of mAP
    statistics: ClassVar[Mapping] = DETECTION_STATISTICS  # from matched detections per image

    def __init__(
        self,
        num_classes: int,
        score_threshold: float = 0.3,
        eval_batch_size: int = 256,
        primary: str = "map50",
        class_names: tuple[str, ...] = (),
    ) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or tuple(str(i) for i in range(num_classes))
        self.primary = primary
        self.info(primary)
        self.score_threshold = score_threshold
        self.eval_batch_size = eval_batch_size

    @classmethod
    def for_data(cls, data: SceneBundle, **kwargs: object) -> DetectionTask:
        """The task for a scene set: its class count."""
        if not isinstance(data, SceneBundle):
            raise PrunelabError(
                f"a detection task needs scene data (boxes per image), got {type(data).__name__}"
            )
        return cls(data.num_classes, class_names=data.classes, **kwargs)  # type: ignore[arg-type]

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        return METRICS

    def batches(
        self, split: SceneSet, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[SceneSet]:
        """Batches of scenes, shuffled iff ``generator`` is given."""
        n = len(split)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            yield split.take(order[i : i + batch_size])

    def loss_of(self, outputs: tuple[Tensor, Tensor], batch: SceneSet) -> Tensor:
        return _detector.detection_loss(outputs, batch.boxes, batch.labels)

    def soft_loss(self, student: tuple, teacher: tuple, temperature: float) -> Tensor:
        """The teacher's class probabilities and boxes on its confident cells."""
        return _detector.distillation_loss(student, teacher)

    def inputs(self, batch: SceneSet) -> Tensor:
        return batch.images

    @torch.no_grad()
    def predict(self, model: nn.Module, split: SceneSet) -> list[Detections]:
        """Decoded detections for every scene (model run in eval mode, state restored)."""
        was_training = model.training
        model.eval()
        try:
            out: list[Detections] = []
            for batch in self.batches(split, self.eval_batch_size, None):
                out.extend(_detector.decode(model(batch.images)))
            return out
        finally:
            model.train(was_training)

    @torch.no_grad()
    def mean_loss(self, model: nn.Module, split: SceneSet) -> float:
        """The detector loss averaged over evaluation batches, in eval mode."""
        was_training = model.training
        model.eval()
        try:
            batches = self.batches(split, self.eval_batch_size, None)
            losses = [float(self.loss(model, b)) for b in batches]
        finally:
            model.train(was_training)
        return sum(losses) / len(losses)

    def evaluate(
        self,
        model: nn.Module,
        split: SceneSet,
        reference: list[Detections] | None,
        outputs: list[Detections] | None = None,
    ) -> dict[str, float]:
        """Every metric of :meth:`metric_infos`; ``fidelity_map50`` is NaN without a reference."""
        preds = outputs if outputs is not None else self.predict(model, split)
        truth = truth_of(split)
        res = coco_map(preds, truth, self.num_classes)
        res.update(precision_recall(preds, truth, self.score_threshold))
        res["fidelity_map50"] = (
            fidelity_map50(preds, reference, self.num_classes, self.score_threshold)
            if reference is not None
            else math.nan
        )
        res["loss"] = self.mean_loss(model, split)
        return res

    def records(
        self, split: SceneSet, outputs: list[Detections], reference: list[Detections] | None
    ) -> dict[str, np.ndarray]:
        """Detections matched as COCO matches them, boxes per image and class, and the
        counts behind precision and recall (:mod:`prunelab.measure.detection_records`)."""
        return detection_records(outputs, truth_of(split), self.num_classes, self.score_threshold)

    def example_input(self, split: SceneSet, n: int = 1) -> Tensor:
        return split.images[:n]

    def artifacts(
        self, model: nn.Module, split: SceneSet, outputs: list[Detections]
    ) -> dict[str, np.ndarray]:
        """The first :data:`GRID_IMAGES` test scenes' detections, with the images (uint8) and
        their true boxes, for the report's grid of dense vs pruned detections."""
        n = min(GRID_IMAGES, len(split))
        images = (split.images[:n] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return {
            **detection_artifacts(outputs, n),
            **detection_artifacts(truth_of(split.subset(n)), n, prefix="det_truth"),
            "det_images": images,  # (n, C, H, W) uint8
            "det_classes": np.array(self.class_names, dtype=str),
        }
