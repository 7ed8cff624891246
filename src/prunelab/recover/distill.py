"""Distillation from the dense model: one recovery objective for every task kind.

:class:`Distilled` wraps a task: on each of the task's own batches the loss is the task's
:meth:`~prunelab.tasks.base.Task.distill_loss`, by default
``(1 - weight) · task.loss + weight · task.soft_loss(student, teacher, T)``, the teacher being the
dense model, frozen, in eval mode. What "close to the teacher" means belongs to the task:
``T²·KL`` of logits for classification (Hinton et al. 2015) and of next-token distributions for
language models, ``1 - cos`` of embeddings for encoders, and for detectors the detector's own
loss on the teacher's detections as boxes. A sweep selects it with ``[finetune] distill = 0.5``
(``temperature = 2``); the dense control then gets the same objective, so the comparison stays
fair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.training import Objective, TrainConfig


@dataclass(frozen=True, eq=False)
class Distilled:
    """A task's loss mixed with distillation from ``teacher`` (satisfies ``Objective``).

    >>> from prunelab.tasks import make_task
    >>> m = nn.Linear(3, 2); task = make_task()
    >>> obj = Distilled(task, m, weight=1.0)
    >>> batch = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> round(float(obj.loss(m, batch).detach()), 6)  # the student is the teacher
    0.0
    """

    task: Any  # a prunelab.tasks.Task
    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise PrunelabError(f"distillation weight must be in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise PrunelabError(f"temperature must be > 0, got {self.temperature}")

    def batches(self, split: Any, batch_size: int, generator: torch.Generator | None) -> Iterator:
        return self.task.batches(split, batch_size, generator)

    def inputs(self, batch: Any) -> Any:
        return self.task.inputs(batch)

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.task.distill_loss(model, self.teacher, batch, self.weight, self.temperature)


def recovery_objective(task: Any, dense: nn.Module, cfg: TrainConfig) -> Objective:
    """What recovery minimises under ``cfg``: the task's loss, or it distilled from ``dense``
    when ``cfg.distill`` > 0 (``dense`` is read in eval mode and never changed)."""
    if cfg.distill == 0:
        return task
    return Distilled(task, dense.eval(), cfg.distill, cfg.temperature)
