"""The ``detection`` task: any detector following torchvision's convention, COCO mAP, fidelity.

The detector is a black box behind :mod:`prunelab.tasks.detector_contract` (eval mode: a list of
dicts with ``boxes``, ``labels``, ``scores``; train mode: a dict of losses, or a user loss
function by import path). prunelab's own ``detector-tiny`` goes through the same contract.

* **Labelled data** (boxes per image): COCO mAP@0.5 is primary; mAP@0.5:0.95, precision and
  recall at ``score_threshold``, fidelity mAP@0.5 to the dense detections and the validation
  loss are reported.
* **Unlabelled data** (images only, e.g. the frames a robot has): fidelity to the dense
  detector is all there is, so ``fidelity_map50`` is primary, with mAP@0.5:0.95, precision and
  recall against the dense detections; recovery trains on the dense detector's detections
  (score ``>= score_threshold``) as targets.
* **Distillation** (``[finetune] distill = w``): ``(1 - w) · loss(true boxes) + w · loss(the
  dense detector's detections as boxes)``, for any detector that follows the contract.

>>> from prunelab.sources.data.scenes import load_scenes
>>> scenes = load_scenes("digit-scenes", n_train=8, n_val=4, n_test=4)
>>> task = DetectionTask.for_data(scenes)
>>> from prunelab.sources.models.zoo import build_model
>>> model = build_model("detector-tiny", scenes.input_shape, scenes.num_classes)
>>> sorted(task.evaluate(model, scenes.val, None))
['fidelity_map50', 'loss', 'map', 'map50', 'precision', 'recall']
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunelab.errors import PrunelabError
from prunelab.measure.detection import coco_map, detection_artifacts, fidelity, precision_recall
from prunelab.measure.detection_records import DETECTION_STATISTICS, detection_records
from prunelab.sources.data.detection import DetectionBundle, DetectionSet
from prunelab.sources.models.boxes import Detections
from prunelab.tasks.base import MetricInfo, Task
from prunelab.tasks.detector_contract import (
    NoLoss,
    UserLoss,
    as_detections,
    loss_mode,
    run,
    total_loss,
)
from prunelab.training import full_precision

log = logging.getLogger(__name__)
GRID_IMAGES = 6  # test images whose detections every cell stores for the report
THUMB_PX = 160  # longest side of the stored grid images (boxes scaled alike)
EVAL_PIXELS = 2**24  # values per evaluation batch (64 scenes of 64x64 up to 256; photos fewer)

LABELLED = (
    MetricInfo("map50", True, "COCO mAP at IoU 0.5", fraction=True, dead=0.0),
    MetricInfo("map", True, "COCO mAP averaged over IoU 0.50:0.05:0.95", True, 0.0),
    MetricInfo("precision", True, "precision of detections scoring >= the score threshold", True),
    MetricInfo("recall", True, "recall of detections scoring >= the score threshold", True, 0.0),
    MetricInfo(
        "fidelity_map50", True, "mAP@0.5 against the dense detector's detections", True, 0.0
    ),
    MetricInfo("loss", False, "the detector's training loss, mean per batch (NaN: it has none)"),
)
UNLABELLED = (
    MetricInfo(
        "fidelity_map50", True, "mAP@0.5 against the dense detector's detections", True, 0.0
    ),
    MetricInfo("fidelity_map", True, "mAP@0.5:0.95 against the dense detections", True, 0.0),
    MetricInfo(
        "fidelity_precision", True, "share of detections the dense detector also made", True
    ),
    MetricInfo("fidelity_recall", True, "share of the dense detections found again", True, 0.0),
)


def truth_of(split: DetectionSet) -> list[Detections]:
    """The split's labelled boxes as ground-truth detections (score 1)."""
    pairs = zip(split.boxes, split.labels)
    return [Detections(b, torch.ones(len(b), device=b.device), y) for b, y in pairs]


class DetectionTask(Task):
    """Detection with any detector following the contract (module docstring).

    ``score_threshold`` fixes the operating point of precision/recall, which dense detections
    are the fidelity reference, and which become targets in recovery without labels.
    """

    kind: ClassVar[str] = "detection"
    fidelity: ClassVar[str] = "fidelity_map50"
    tolerance_points: ClassVar[float] = 1.0  # one point of mAP
    statistics: ClassVar[Mapping] = DETECTION_STATISTICS  # from matched detections per image

    def __init__(
        self,
        num_classes: int = 0,
        score_threshold: float = 0.3,
        primary: str | None = None,
        class_names: tuple[str, ...] = (),
        loss: str | UserLoss | None = None,
        labelled: bool = True,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or tuple(str(i) for i in range(num_classes))
        self.labelled = labelled
        self.primary = primary or ("map50" if labelled else "fidelity_map50")
        self.info(self.primary)
        self.score_threshold = score_threshold
        self.user_loss = UserLoss.load(loss) if isinstance(loss, str) else loss
        self.teacher: nn.Module | None = None  # the dense detector, once known

    @classmethod
    def for_data(cls, data: DetectionBundle, **kwargs: Any) -> DetectionTask:
        """The task for detection data: its classes, and whether it has labels."""
        if not isinstance(data, DetectionBundle):
            raise PrunelabError(
                "a detection task needs detection data (boxes per image: a scene set or "
                f"[data] reader = 'coco'), got {type(data).__name__}"
            )
        return cls(data.num_classes, class_names=data.classes, labelled=data.labelled, **kwargs)

    def with_dense(self, dense: nn.Module) -> DetectionTask:
        """This task with the dense detector as the source of targets when there are no labels."""
        task = copy.copy(self)
        task.teacher = dense
        return task

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        return LABELLED if self.labelled else UNLABELLED

    def check_model(self, model: nn.Module, data: DetectionBundle) -> None:
        """The detector runs on two of the data's images and answers as the contract says."""
        self.predict(model, data.test.subset(2))

    def batches(
        self, split: DetectionSet, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[DetectionSet]:
        """Batches of images, shuffled iff ``generator`` is given."""
        n = len(split)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            yield split.take(order[i : i + batch_size])

    def inputs(self, batch: DetectionSet) -> Tensor:
        return batch.pixels()

    def example_input(self, split: DetectionSet, n: int = 1) -> Tensor:
        return split.subset(n).pixels()

    # -- losses ---------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: DetectionSet) -> Any:
        """The detector's training output on ``batch`` (losses, or what the user loss reads)."""
        return self._outputs(model, batch.pixels(), self._targets(batch))

    def loss_of(self, outputs: Any, batch: DetectionSet) -> Tensor:
        if self.user_loss is not None:
            return self.user_loss(outputs, self._targets(batch))
        return total_loss(outputs)

    def loss(self, model: nn.Module, batch: DetectionSet) -> Tensor:
        return self._loss(model, batch.pixels(), self._targets(batch))

    def distill_loss(
        self, model: nn.Module, teacher: nn.Module, batch: DetectionSet, weight: float,
        temperature: float,
    ) -> Tensor:  # fmt: skip
        """``(1 - weight)`` · the loss on the true boxes + ``weight`` · the loss on the
        teacher's detections (``temperature`` has no role here)."""
        images = batch.pixels()
        soft = self._loss(model, images, self._detections_as_targets(teacher, images))
        if weight == 1.0 or not self.labelled:  # unlabelled: the task's loss is this one
            return soft
        return (1 - weight) * self._loss(model, images, batch.targets()) + weight * soft

    def _outputs(self, model: nn.Module, images: Tensor, targets: list[dict]) -> Any:
        with loss_mode(model):
            return run(model, images) if self.user_loss else run(model, images, targets)

    def _loss(self, model: nn.Module, images: Tensor, targets: list[dict]) -> Tensor:
        out = self._outputs(model, images, targets)
        return self.user_loss(out, targets) if self.user_loss is not None else total_loss(out)

    def _targets(self, batch: DetectionSet) -> list[dict[str, Tensor]]:
        if self.labelled:
            return batch.targets()
        if self.teacher is None:
            raise PrunelabError(
                "unlabelled detection data: recovery learns from the dense detector's "
                "detections; training a detector from scratch needs labelled boxes"
            )
        return self._detections_as_targets(self.teacher, batch.pixels())

    @torch.no_grad()
    def _detections_as_targets(self, teacher: nn.Module, images: Tensor) -> list[dict]:
        was_training = teacher.training
        teacher.eval()
        try:
            with full_precision():  # the teacher is the float32 reference
                found = as_detections(run(teacher, images), len(images))
        finally:
            teacher.train(was_training)
        kept = [d.above(self.score_threshold) for d in found]
        return [{"boxes": d.boxes, "labels": d.labels} for d in kept]

    # -- predictions and metrics ----------------------------------------------------------

    def eval_batch_size(self, split: DetectionSet) -> int:
        return max(1, min(256, EVAL_PIXELS // math.prod(split.images.shape[1:])))

    @torch.no_grad()
    def predict(self, model: nn.Module, split: DetectionSet) -> list[Detections]:
        """Detections for every image (model run in eval mode, its mode restored)."""
        was_training = model.training
        model.eval()
        try:
            out: list[Detections] = []
            for batch in self.batches(split, self.eval_batch_size(split), None):
                out.extend(as_detections(run(model, batch.pixels()), len(batch)))
            return out
        finally:
            model.train(was_training)

    def references(self, dense: nn.Module, data: DetectionBundle) -> dict[str, Any]:
        """The dense detections per split; without labels they must find something."""
        refs = super().references(dense, data)
        if not self.labelled and not any(len(d.above(self.score_threshold)) for d in refs["test"]):
            raise PrunelabError(
                f"the dense detector finds nothing scoring >= {self.score_threshold} on the "
                f"{len(data.test)} test images: unlabelled data has no reference to be "
                "faithful to (more images, or images with the objects it detects)"
            )
        return refs

    @torch.no_grad()
    def mean_loss(self, model: nn.Module, split: DetectionSet) -> float:
        """The training loss averaged over batches (BatchNorm statistics left as they were);
        NaN for a detector that gives no losses."""
        try:
            losses = [float(self.loss(model, b))
                      for b in self.batches(split, self.eval_batch_size(split), None)]  # fmt: skip
        except NoLoss:
            return math.nan
        return sum(losses) / len(losses)

    def evaluate(
        self,
        model: nn.Module,
        split: DetectionSet,
        reference: list[Detections] | None,
        outputs: list[Detections] | None = None,
    ) -> dict[str, float]:
        """Every metric of :meth:`metric_infos`; fidelity metrics are NaN without a reference."""
        preds = outputs if outputs is not None else self.predict(model, split)
        fid = (
            fidelity(preds, reference, self.score_threshold)
            if reference is not None
            else {m.name: math.nan for m in UNLABELLED}
        )
        if not self.labelled:
            return fid
        truth = truth_of(split)
        res = coco_map(preds, truth, self.num_classes)
        res.update(precision_recall(preds, truth, self.score_threshold))
        res["fidelity_map50"] = fid["fidelity_map50"]
        res["loss"] = self.mean_loss(model, split)
        return res

    def records(
        self, split: DetectionSet, outputs: list[Detections], reference: list[Detections] | None
    ) -> dict[str, np.ndarray]:
        """Detections matched as COCO matches them, boxes per image and class, and the
        counts behind precision and recall (:mod:`prunelab.measure.detection_records`).
        Unlabelled data has none: its fidelity metrics are resampled over seeds only."""
        if not self.labelled:
            return {}
        return detection_records(outputs, truth_of(split), self.num_classes, self.score_threshold)

    def artifacts(
        self, model: nn.Module, split: DetectionSet, outputs: list[Detections]
    ) -> dict[str, np.ndarray]:
        """The first :data:`GRID_IMAGES` test images (uint8, longest side at most
        :data:`THUMB_PX`) with their detections and true boxes scaled alike, for the report."""
        part = split.subset(GRID_IMAGES)
        n = len(part)
        scale = min(1.0, THUMB_PX / max(part.images.shape[2:]))
        images = part.pixels()
        if scale < 1.0:
            images = F.interpolate(images, scale_factor=scale, mode="area")
        small = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

        def scaled(dets: list[Detections]) -> list[Detections]:
            return [Detections(d.boxes * scale, d.scores, d.labels) for d in dets]

        return {
            **detection_artifacts(scaled(outputs[:n]), n),
            **detection_artifacts(scaled(truth_of(part)), n, prefix="det_truth"),
            "det_images": small,  # (n, C, h, w) uint8
            "det_classes": np.array(self._names(outputs), dtype=str),
        }

    def _names(self, outputs: list[Detections]) -> tuple[str, ...]:
        """Class names, numbered past the known ones for labels the detector uses beyond them."""
        top = max((int(d.labels.max()) + 1 for d in outputs if len(d)), default=0)
        return self.class_names + tuple(str(i) for i in range(len(self.class_names), top))
