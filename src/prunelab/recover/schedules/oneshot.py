"""One-shot pruning and iterative magnitude pruning with optional lottery-ticket rewinding."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import apply_masks, get_masks
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
)

log = logging.getLogger(__name__)


@SCHEDULES.register("oneshot")
@dataclass(frozen=True)
class OneShot:
    """Prune straight to the target, then fine-tune for the whole budget.

    >>> OneShot()
    OneShot()
    """

    name: ClassVar[str] = "oneshot"

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult:
        check_job(job, self.name, fixed=True)
        pruner = Pruner(model, job)
        masks = pruner.prune_to(job.target_sparsity)
        traj: list[dict] = []
        record(traj, phase="prune", step=0, sparsity=job.target_sparsity)
        steps = finetune(model, job, job.train_cfg.epochs)
        record(
            traj,
            phase="finetune",
            step=steps,
            sparsity=job.target_sparsity,
            epochs=job.train_cfg.epochs,
        )
        return ScheduleResult(model, masks, traj)


def round_sparsities(target: float, rounds: int) -> list[float]:
    """Iterative levels removing the same fraction of the *remaining* weights each round.

    ``s_r = 1 - (1 - target)^(r / rounds)``; the last level is exactly ``target``.

    >>> [round(s, 3) for s in round_sparsities(0.875, 3)]
    [0.5, 0.75, 0.875]
    """
    levels = [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]
    levels[-1] = target
    return levels


@SCHEDULES.register("iterative")
@dataclass(frozen=True)
class Iterative:
    """``rounds`` of (prune a fraction of what remains, fine-tune ``budget / rounds`` epochs).

    ``rewind``: after each pruning step, reset the surviving weights to their values
    ``rewind`` epochs into this schedule's training (Frankle & Carbin 2019; ``0`` = the
    starting, i.e. pretrained, weights as in Chen et al. 2020). ``None`` = no rewinding
    (weights continue from fine-tuning). The snapshot is taken during round 1, so
    ``rewind`` may not exceed that round's share of the budget.

    >>> Iterative(3, rewind=0.0).rounds
    3
    """

    rounds: int = 3
    rewind: float | None = None
    name: ClassVar[str] = "iterative"
    positional: ClassVar[tuple[str, ...]] = ("rounds",)
    aliases: ClassVar[dict[str, str]] = {"rewind": "rewind=0"}

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise PrunelabError(f"iterative rounds must be an integer >= 1, got {self.rounds}")
        if self.rewind is not None and not self.rewind >= 0:
            raise PrunelabError(f"rewind epoch must be >= 0, got {self.rewind}")

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult:
        check_job(job, self.name)
        per_round = job.train_cfg.epochs / self.rounds
        if self.rewind is not None and self.rewind > per_round + 1e-9:
            raise PrunelabError(
                f"rewind epoch {self.rewind:g} is past round 1's budget ({per_round:g} epochs)"
            )
        pruner, traj, step = Pruner(model, job), [], 0
        pruner.attach_dense()  # same state-dict layout before and after pruning
        rewind_state = snapshot(model) if self.rewind == 0 else None
        rewind_step = max(1, round((self.rewind or 0) * job.steps_per_epoch()))

        def grab(s: int, _total: int) -> None:
            nonlocal rewind_state
            if s == rewind_step and rewind_state is None:
                rewind_state = snapshot(model)

        for r, level in enumerate(round_sparsities(job.target_sparsity, self.rounds), 1):
            masks = pruner.prune_to(level)
            if rewind_state is not None:
                _rewind(model, rewind_state)
            record(
                traj,
                phase="prune",
                round=r,
                step=step,
                sparsity=level,
                rewound=rewind_state is not None,
            )
            hook = grab if (self.rewind and rewind_state is None) else None
            step += finetune(model, job, per_round, on_step=hook)
            record(traj, phase="finetune", round=r, step=step, sparsity=level, epochs=per_round)
        return ScheduleResult(model, masks, traj)


def _rewind(model: nn.Module, state: dict) -> None:
    """Reset every parameter to ``state`` but keep the current masks (survivors rewind)."""
    current = model.state_dict()
    restore(model, {k: (current[k] if k.endswith(".mask") else state[k]) for k in current})
    apply_masks(model, get_masks(model))  # zero the rewound originals under the masks
