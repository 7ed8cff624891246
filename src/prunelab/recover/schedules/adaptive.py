"""Adaptive controller: raise sparsity while a validation metric stays within tolerance.

Each trial removes ``step`` of the remaining weights (nested masks), recovers with a short
fine-tune, and checks the metric on the validation split against the dense model. A trial
that breaks tolerance is undone (weights and masks restored) and the step halves; the
controller stops at the target ceiling, when the step falls below ``min_step``, or when the
budget of ``max_trials`` recoveries (sharing ``train_cfg.epochs``) is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import METRICS, Evaluation
from prunelab.recover.schedules.base import (
    SCHEDULES,
    PruneJob,
    Pruner,
    ScheduleResult,
    check_job,
    finetune,
    record,
    restore,
    snapshot,
    val_logits,
)


@dataclass(frozen=True)
class Tolerance:
    """A metric bound: at most ``max_drop`` worse than dense, and/or ``min_value`` absolute.

    For a lower-is-better metric (loss, kl) "worse" means higher, and ``min_value`` is read
    as a ceiling.

    >>> Tolerance("accuracy", max_drop=0.005).holds(0.897, dense=0.901)
    True
    >>> Tolerance("agreement", min_value=0.98).holds(0.975, dense=1.0)
    False
    """

    metric: str = "accuracy"
    max_drop: float | None = 0.005
    min_value: float | None = None

    def __post_init__(self) -> None:
        METRICS.get(self.metric)  # unknown metric: fail now, listing the valid ones
        if self.max_drop is None and self.min_value is None:
            raise PrunelabError("tolerance needs max_drop or min_value")
        if self.max_drop is not None and self.max_drop < 0:
            raise PrunelabError(f"max_drop must be >= 0, got {self.max_drop}")

    def holds(self, value: float, dense: float) -> bool:
        sign = 1.0 if METRICS.get(self.metric).higher_is_better else -1.0
        ok = self.max_drop is None or sign * (dense - value) <= self.max_drop + 1e-12
        return ok and (self.min_value is None or sign * (value - self.min_value) >= -1e-12)


@SCHEDULES.register("adaptive")
@dataclass(frozen=True)
class Adaptive:
    """Find the highest sparsity (up to the job's target) whose metric holds the tolerance."""

    metric: str = "accuracy"
    max_drop: float | None = 0.005
    min_value: float | None = None
    step: float = 0.5
    min_step: float = 0.05
    max_trials: int = 10
    name: ClassVar[str] = "adaptive"
    tunes_on_validation: ClassVar[bool] = True  # its trials are judged on validation rows
    positional: ClassVar[tuple[str, ...]] = ("metric",)
    aliases: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        Tolerance(self.metric, self.max_drop, self.min_value)
        if not 0.0 < self.min_step <= self.step < 1.0:
            raise PrunelabError(
                f"adaptive needs 0 < min_step <= step < 1, got {self.min_step}, {self.step}"
            )
        if self.max_trials < 1:
            raise PrunelabError(f"max_trials must be >= 1, got {self.max_trials}")

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.metric, self.max_drop, self.min_value)

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult:
        check_job(job, self.name)
        pruner, traj = Pruner(model, job), []
        dense_logits = job.reference_logits
        if dense_logits is None:
            dense_logits = val_logits(model, job)
        score = _scorer(self.metric, job, dense_logits)
        dense = score(model)
        pruner.attach_dense()
        accepted, level, step = snapshot(model), 0.0, self.step
        record(
            traj,
            phase="start",
            trial=0,
            sparsity=0.0,
            value=dense,
            accepted=True,
            backoff=False,
            step_size=step,
        )
        epochs, used = job.train_cfg.epochs / self.max_trials, 0.0
        for trial in range(1, self.max_trials + 1):
            if level >= job.target_sparsity - 1e-12 or step < self.min_step - 1e-12:
                break
            trying = min(job.target_sparsity, 1 - (1 - level) * (1 - step))
            pruner.prune_to(trying)
            finetune(model, job, epochs)
            used += epochs
            value = score(model)
            ok = self.tolerance.holds(value, dense)
            record(
                traj,
                phase="trial",
                trial=trial,
                sparsity=trying,
                value=value,
                accepted=ok,
                backoff=not ok,
                step_size=step,
                epochs=epochs,
            )
            if ok:
                accepted, level = snapshot(model), trying
            else:
                restore(model, accepted)
                step /= 2
        restore(model, accepted)
        leftover = max(job.train_cfg.epochs - used, 0.0)  # the rest of the budget recovers
        value = self._recover(model, job, leftover, score, dense, accepted)
        record(
            traj,
            phase="final",
            trial=len(traj),
            sparsity=level,
            value=value,
            accepted=True,
            backoff=False,
            epochs=leftover,
        )
        return ScheduleResult(model, pruner.masks(), traj)

    def _recover(
        self, model: nn.Module, job: PruneJob, epochs: float, score, dense: float, accepted: dict
    ) -> float:
        """Spend the leftover budget; keep it only if the tolerance still holds."""
        finetune(model, job, epochs)
        value = score(model)
        if not self.tolerance.holds(value, dense):  # never return a model that breaks it
            restore(model, accepted)
            value = score(model)
        return value


def _scorer(metric: str, job: PruneJob, dense_logits: Tensor):
    """``model -> metric value`` on the validation split, against the dense logits."""
    m = METRICS.get(metric)

    def score(model: nn.Module) -> float:
        return m(Evaluation(val_logits(model, job), job.data.val.y, model, dense_logits))

    return score
