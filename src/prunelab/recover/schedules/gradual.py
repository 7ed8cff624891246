"""Gradual pruning during (re)training: Zhu & Gupta's polynomial schedule (cubic or linear)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.masks import mask_sparsity
from prunelab.recover.schedules.base import (
    SCHEDULES,
    PruneJob,
    Pruner,
    ScheduleResult,
    check_job,
    finetune,
    record,
)

EXPONENTS = {"cubic": 3, "linear": 1}


def polynomial_sparsity(
    t: int, s_i: float, s_f: float, t0: int, n: int, dt: int, power: int = 3
) -> float:
    """Zhu & Gupta 2017: ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^power``.

    Held at ``s_i`` before ``t0`` and at ``s_f`` after ``t0 + n dt``; ``power=1`` is linear.

    >>> polynomial_sparsity(0, 0.0, 0.9, 0, 10, 10), polynomial_sparsity(100, 0.0, 0.9, 0, 10, 10)
    (0.0, 0.9)
    >>> round(polynomial_sparsity(50, 0.0, 0.8, 0, 10, 10), 6)  # 0.8 * (1 - 0.5^3)
    0.7
    """
    frac = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** power


def update_steps(t0: int, n: int, dt: int) -> list[int]:
    """Steps at which masks change: ``t0, t0 + dt, ..., t0 + n dt``."""
    return [t0 + k * dt for k in range(n + 1)]


@SCHEDULES.register("gradual")
@dataclass(frozen=True)
class Gradual:
    """Raise sparsity from ``initial`` to the target during training, updating every ``dt`` steps.

    Pruning runs over ``[start_frac, end_frac]`` of the budget's optimizer steps; the rest
    recovers at the final sparsity. ``every_steps=None`` picks ``dt`` for ~``updates`` updates.

    >>> Gradual("linear").kind
    'linear'
    """

    kind: str = "cubic"
    start_frac: float = 0.0
    end_frac: float = 0.75
    every_steps: int | None = None
    initial: float = 0.0
    updates: int = 20
    name: ClassVar[str] = "gradual"
    positional: ClassVar[tuple[str, ...]] = ("kind",)
    aliases: ClassVar[dict[str, str]] = {"cubic": "kind=cubic", "linear": "kind=linear"}

    def __post_init__(self) -> None:
        if self.kind not in EXPONENTS:
            raise PrunelabError(f"unknown gradual kind '{self.kind}'; valid: cubic, linear")
        if not 0.0 <= self.start_frac < self.end_frac <= 1.0:
            raise PrunelabError(
                f"gradual needs 0 <= start_frac < end_frac <= 1, got {self.start_frac}, "
                f"{self.end_frac}"
            )
        if self.every_steps is not None and self.every_steps < 1:
            raise PrunelabError(f"every_steps must be >= 1, got {self.every_steps}")
        if self.updates < 1 or not 0.0 <= self.initial < 1.0:
            raise PrunelabError("gradual needs updates >= 1 and initial sparsity in [0, 1)")

    def plan(self, total_steps: int) -> tuple[int, int, int]:
        """``(t0, n, dt)`` for a run of ``total_steps`` optimizer steps."""
        t0 = round(self.start_frac * total_steps)
        span = round(self.end_frac * total_steps) - t0
        if span < 1:
            raise PrunelabError(
                f"gradual pruning needs a training budget: {total_steps} steps leave no room"
            )
        dt = self.every_steps or max(1, span // self.updates)
        if dt > span:
            raise PrunelabError(f"every_steps={dt} exceeds the pruning span of {span} steps")
        return t0, span // dt, dt

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult:
        check_job(job, self.name)
        if self.initial > job.target_sparsity:
            raise PrunelabError("gradual initial sparsity exceeds the target")
        total = job.with_epochs(job.train_cfg.epochs).total_steps(len(job.data.train))
        t0, n, dt = self.plan(total)
        at = set(update_steps(t0, n, dt))
        pruner, traj = Pruner(model, job), []
        pruner.attach_dense()

        def update(step: int, _total: int = total) -> None:
            if step not in at:
                return
            level = polynomial_sparsity(
                step, self.initial, job.target_sparsity, t0, n, dt, EXPONENTS[self.kind]
            )
            stale = pruner.masked_nonzeros()  # must be 0: masks held since the last update
            achieved = mask_sparsity(pruner.prune_to(level))
            record(
                traj,
                phase="prune",
                step=step,
                sparsity=level,
                achieved=achieved,
                masked_nonzeros=stale,
            )

        update(0)  # t0 == 0: the initial level applies before the first step
        finetune(model, job, job.train_cfg.epochs, on_step=update)
        return ScheduleResult(model, pruner.masks(), traj)
