"""Schedules: *how* a model reaches its sparsity (one-shot, iterative, gradual, regrow, adaptive).

Every schedule is a frozen dataclass registered in :data:`SCHEDULES`; :func:`run_schedule`
runs any of them under one training budget, and :func:`parse_schedule` reads CLI spellings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunelab.data import DataBundle
from prunelab.prune.structures import Structure, Unstructured
from prunelab.recover.schedules.adaptive import Adaptive, Tolerance
from prunelab.recover.schedules.base import SCHEDULES, PruneJob, Schedule, ScheduleResult
from prunelab.recover.schedules.gradual import Gradual, polynomial_sparsity
from prunelab.recover.schedules.oneshot import Iterative, OneShot, round_sparsities
from prunelab.recover.schedules.parse import canonical_schedule, format_schedule, parse_schedule
from prunelab.recover.schedules.regrow import Regrow, drop_and_grow
from prunelab.training import StepCallback, TrainConfig


def run_schedule(
    schedule: Schedule,
    model: nn.Module,
    data: DataBundle,
    target_sparsity: float,
    method: str = "magnitude",
    allocation: str = "global",
    train_cfg: TrainConfig | None = None,
    generator: torch.Generator | None = None,
    reference_logits: Tensor | None = None,
    structure: Structure | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    prune_last: bool = True,
    calibration_batches: int = 4,
    on_step: StepCallback | None = None,
) -> ScheduleResult:
    """Prune ``model`` in place to ``target_sparsity`` following ``schedule``.

    ``train_cfg.epochs`` is the *total* training budget, shared by the schedule's rounds or
    phases, so schedules compare at equal cost (default ``TrainConfig()``: one epoch).
    ``reference_logits`` are the dense model's
    logits on ``data.val`` (used by :class:`Adaptive`; computed when omitted). Criteria that
    need calibration (taylor, wanda) re-score on ``calibration_batches`` training
    batches at every mask update. ``on_step(step, total)`` observes every training step of
    every phase (progress bars); the step count restarts with each phase.

    >>> from prunelab.sources.data import load_dataset
    >>> from prunelab.sources.models import build_model
    >>> d = load_dataset("digits"); m = build_model("mlp-tiny", d.input_shape, 10)
    >>> r = run_schedule(parse_schedule("iterative:2"), m, d, 0.75,
    ...                  train_cfg=TrainConfig(epochs=0.2), generator=torch.Generator())
    >>> round(r.sparsity, 4), [row["sparsity"] for row in r.trajectory if row["phase"] == "prune"]
    (0.75, [0.5, 0.75])
    """
    job = PruneJob(
        data=data,
        target_sparsity=target_sparsity,
        train_cfg=train_cfg or TrainConfig(),
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        method=method,
        allocation=allocation,
        structure=structure or Unstructured(),
        reference_logits=reference_logits,
        include=include,
        exclude=exclude,
        prune_last=prune_last,
        calibration_batches=calibration_batches,
        on_step=on_step,
    )
    SCHEDULES.get(getattr(schedule, "name", type(schedule).__name__))  # registered kinds only
    return schedule.run(model, job)


__all__ = [
    "SCHEDULES",
    "Adaptive",
    "Gradual",
    "Iterative",
    "OneShot",
    "PruneJob",
    "Regrow",
    "Schedule",
    "ScheduleResult",
    "Tolerance",
    "drop_and_grow",
    "format_schedule",
    "canonical_schedule",
    "parse_schedule",
    "polynomial_sparsity",
    "round_sparsities",
    "run_schedule",
]
