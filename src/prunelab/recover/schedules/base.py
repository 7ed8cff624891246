"""What every schedule shares: the job it runs, its result, the registry, and nested re-pruning.

A schedule is a frozen dataclass (its config) with one method, ``run(model, job)``. The job
carries the choices that are independent of the schedule (criterion, allocation, structure,
data, training budget), so a sweep varies them separately (STYLE rule 5).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from prunelab.data import DataBundle, Split
from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import predict
from prunelab.prune.apply import apply_masks, get_masks
from prunelab.prune.criteria import CRITERIA, compute_scores
from prunelab.prune.masks import Masks, check_sparsity, mask_sparsity
from prunelab.prune.structures import Structure, Unstructured
from prunelab.prune.targets import select_targets
from prunelab.recover.finetune import train
from prunelab.registry import Registry
from prunelab.training import StepCallback, TrainConfig

Trajectory = list[dict[str, Any]]


@dataclass(frozen=True, eq=False)
class PruneJob:
    """Everything a schedule needs besides its own config; ``train_cfg.epochs`` is the budget."""

    data: DataBundle
    target_sparsity: float
    train_cfg: TrainConfig
    generator: torch.Generator
    method: str = "magnitude"
    allocation: str = "global"
    structure: Structure = field(default_factory=Unstructured)
    reference_logits: Tensor | None = None  # dense logits on ``data.val`` (computed if None)
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    prune_last: bool = True
    calibration_batches: int = 4
    on_step: StepCallback | None = None  # progress observer, called after the schedule's hook

    def with_epochs(self, epochs: float) -> TrainConfig:
        """The job's training config with another epoch count (a share of the budget)."""
        return dataclasses.replace(self.train_cfg, epochs=max(epochs, 0.0))

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / self.train_cfg.batch_size)


@dataclass
class ScheduleResult:
    """The pruned model (masks attached), its final masks, and the recorded trajectory."""

    model: nn.Module
    masks: Masks
    trajectory: Trajectory = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return mask_sparsity(self.masks)


class Schedule(Protocol):
    """A schedule config: a frozen dataclass with a registered ``name``."""

    name: ClassVar[str]

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult: ...


SCHEDULES: Registry[type] = Registry("schedule")


class Pruner:
    """Scores the model's current weights and thresholds them into *nested* masks.

    Weights already masked score ``-inf``, so raising sparsity never revives a pruned weight
    (what iterative, gradual and adaptive pruning require).
    """

    def __init__(self, model: nn.Module, job: PruneJob) -> None:
        self.model, self.job = model, job
        self.targets = select_targets(model, job.include, job.exclude, job.prune_last)
        needs = CRITERIA.get(job.method).needs
        self.calibration = _calibration(job, job.data.train) if needs else None

    def masks_at(self, sparsity: float) -> Masks:
        """Masks at ``sparsity`` nested inside the masks currently on the model."""
        scores = compute_scores(
            self.model, self.targets, self.job.method, self.job.generator, self.calibration
        )
        current = get_masks(self.model)
        for name, s in scores.items():
            if name in current:
                scores[name] = s.masked_fill(~current[name], -math.inf)
        example = self.job.data.val.x[:1]  # (1, ...) traces channel removals
        return self.job.structure.masks_at(
            self.model, example, scores, check_sparsity(sparsity), self.job.allocation
        )

    def prune_to(self, sparsity: float) -> Masks:
        """Apply :meth:`masks_at` to the model and return the masks."""
        masks = self.masks_at(sparsity)
        apply_masks(self.model, {n: m.clone() for n, m in masks.items()})  # no aliasing
        return masks

    def attach_dense(self) -> None:
        """Attach all-True masks, so every target carries a mask parametrization."""
        apply_masks(
            self.model,
            {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.targets.items()},
        )

    def masks(self) -> Masks:
        """The masks now on the target layers."""
        return {n: m for n, m in get_masks(self.model).items() if n in self.targets}

    def masked_nonzeros(self) -> int:
        """Effective weights that are non-zero where the mask says pruned (should be 0)."""
        masks = get_masks(self.model)
        with torch.no_grad():
            return sum(
                int((m.weight[~masks[n]] != 0).sum()) for n, m in self.targets.items() if n in masks
            )


def _calibration(job: PruneJob, split: Split) -> list[tuple[Tensor, Tensor]]:
    """A few fixed training batches for criteria that need gradients or activations."""
    g = torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=job.generator)))
    batches = split.batches(job.train_cfg.batch_size, shuffle=True, generator=g)
    return [b for _, b in zip(range(job.calibration_batches), batches)]


def finetune(
    model: nn.Module, job: PruneJob, epochs: float, on_step: StepCallback | None = None
) -> int:
    """Train ``epochs`` (a share of the budget) with masks fixed; returns the steps taken."""
    cfg = job.with_epochs(epochs)
    hooks = [h for h in (on_step, job.on_step) if h is not None]

    def both(step: int, total: int) -> None:
        for hook in hooks:
            hook(step, total)

    if cfg.epochs > 0:
        train(model, job.data.train, cfg, job.generator, on_step=both if hooks else None)
    return cfg.total_steps(len(job.data.train))


def val_logits(model: nn.Module, job: PruneJob) -> Tensor:
    return predict(model, job.data.val.x)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict (weights, mask buffers)."""
    return copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})


def restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    model.load_state_dict(state, strict=True)


def check_job(job: PruneJob, name: str, fixed: bool = False) -> None:
    """Reject combinations a schedule cannot honour, in one line (``fixed``: the schedule
    accepts a structure that fixes its level, such as N:M)."""
    check_sparsity(job.target_sparsity)
    st = job.structure
    if not (st.schedulable or (fixed and st.fixed_level is not None)):
        raise PrunelabError(
            f"schedule '{name}' cannot prune {st} sparsity (it passes through intermediate "
            "levels); valid: unstructured, channels"
        )
    if job.reference_logits is not None and job.reference_logits.shape[0] != len(job.data.val):
        raise PrunelabError(
            f"reference_logits must be the dense logits on the validation split "
            f"({len(job.data.val)} rows), got {tuple(job.reference_logits.shape)}"
        )


def record(trajectory: Trajectory, **row: Any) -> None:
    """Append one trajectory row (plain floats/ints/strings only, so it stores as JSON)."""
    trajectory.append({k: (float(v) if isinstance(v, Tensor) else v) for k, v in row.items()})
