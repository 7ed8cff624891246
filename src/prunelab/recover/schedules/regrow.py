"""Dynamic sparsity: drop the smallest active weights, regrow where the gradient is largest.

RigL (Evci et al. 2020) at constant sparsity: every ``dt`` steps each layer drops
``f_t * active`` of its smallest-magnitude active weights and regrows as many inactive
positions with the largest |dL/dW| (gradient of the *effective*, masked weight). Regrown
weights start at zero. ``f_t`` decays with a cosine to 0 at ``end_frac`` of the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.apply import apply_masks
from prunelab.prune.masks import mask_sparsity
from prunelab.prune.structures import Unstructured
from prunelab.recover.schedules.base import (
    SCHEDULES,
    PruneJob,
    Pruner,
    ScheduleResult,
    check_job,
    finetune,
    record,
)


def drop_and_grow(weight: Tensor, grad: Tensor, mask: Tensor, k: int) -> Tensor:
    """New mask: drop the ``k`` smallest |weight| among kept, grow the ``k`` largest |grad|
    among positions pruned *before* the drop. Kept count is unchanged.

    >>> w = torch.tensor([0.1, 0.5, 0.0, 0.0]); g = torch.tensor([0.0, 0.0, 0.2, 0.9])
    >>> drop_and_grow(w, g, torch.tensor([True, True, False, False]), 1).tolist()
    [False, True, False, True]
    """
    k = min(k, int(mask.sum()), int((~mask).sum()))
    flat_mask = mask.flatten()
    new = flat_mask.clone()
    if k == 0:
        return new.view(mask.shape)
    drop_score = weight.detach().abs().flatten().masked_fill(~flat_mask, math.inf)
    new[torch.topk(drop_score, k, largest=False).indices] = False
    grow_score = grad.detach().abs().flatten().masked_fill(flat_mask, -math.inf)
    new[torch.topk(grow_score, k).indices] = True
    return new.view(mask.shape)


def cosine_fraction(step: int, end: int, f0: float) -> float:
    """RigL's drop-fraction decay ``f0/2 (1 + cos(pi t / T_end))``.

    >>> cosine_fraction(0, 10, 0.3), cosine_fraction(10, 10, 0.3)
    (0.3, 0.0)
    """
    return f0 / 2 * (1 + math.cos(math.pi * min(step, end) / end))


def effective_grads(
    model: nn.Module, targets: dict[str, nn.Module], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """dL/dW_eff for every target on one batch, also where the mask is zero.

    Under ``parametrize.cached()`` the masked weight is computed once and reused by the
    forward pass, so autograd can differentiate w.r.t. that tensor rather than the original
    (whose gradient is zero under the mask). Parameter ``.grad`` fields are not touched.
    """
    with parametrize.cached():
        eff = {n: m.weight for n, m in targets.items()}
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(eff.values()))
    return dict(zip(eff, grads))


@SCHEDULES.register("regrow")
@dataclass(frozen=True)
class Regrow:
    """Prune to the target, then train while regrowing every ``every_steps`` steps (RigL)."""

    drop_fraction: float = 0.3
    every_steps: int | None = None
    end_frac: float = 0.75
    updates: int = 20
    name: ClassVar[str] = "regrow"
    positional: ClassVar[tuple[str, ...]] = ("drop_fraction",)
    aliases: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        if not 0.0 < self.drop_fraction < 1.0:
            raise PrunelabError(f"drop_fraction must be in (0, 1), got {self.drop_fraction}")
        if not 0.0 < self.end_frac <= 1.0:
            raise PrunelabError(f"end_frac must be in (0, 1], got {self.end_frac}")
        if (self.every_steps is not None and self.every_steps < 1) or self.updates < 1:
            raise PrunelabError("regrow needs every_steps >= 1 and updates >= 1")

    def run(self, model: nn.Module, job: PruneJob) -> ScheduleResult:
        check_job(job, self.name)
        if job.structure != Unstructured():
            raise PrunelabError(
                f"schedule '{self.name}' supports unstructured sparsity only, not {job.structure}"
            )
        total = job.with_epochs(job.train_cfg.epochs).total_steps(len(job.data.train))
        end = round(self.end_frac * total)
        dt = self.every_steps or max(1, end // self.updates)
        pruner, traj = Pruner(model, job), []
        pruner.prune_to(job.target_sparsity)
        record(traj, phase="prune", step=0, sparsity=job.target_sparsity, changed=0)

        def update(step: int, _total: int) -> None:
            if step % dt or step >= end:
                return
            frac = cosine_fraction(step, end, self.drop_fraction)
            x, y = _batch(job)
            stale = pruner.masked_nonzeros()
            changed = _regrow(pruner, effective_grads(model, pruner.targets, x, y), frac)
            record(
                traj,
                phase="regrow",
                step=step,
                sparsity=mask_sparsity(pruner.masks()),
                drop_fraction=frac,
                changed=changed,
                masked_nonzeros=stale,
            )

        finetune(model, job, job.train_cfg.epochs, on_step=update)
        return ScheduleResult(model, pruner.masks(), traj)


def _regrow(pruner: Pruner, grads: dict[str, Tensor], frac: float) -> int:
    """Drop-and-grow every target layer; zero the regrown originals. Returns #grown."""
    old = pruner.masks()
    new = {
        n: drop_and_grow(pruner.targets[n].weight, grads[n], m, round(frac * int(m.sum())))
        for n, m in old.items()
    }
    apply_masks(pruner.model, new)
    with torch.no_grad():
        for n, m in new.items():
            orig = pruner.targets[n].parametrizations.weight.original  # type: ignore[union-attr]
            orig.masked_fill_(m & ~old[n], 0.0)  # RigL: new connections start at zero
    return sum(int((m & ~old[n]).sum()) for n, m in new.items())


def _batch(job: PruneJob) -> tuple[Tensor, Tensor]:
    """One random training batch drawn with the job's generator."""
    n = len(job.data.train)
    idx = torch.randint(n, (min(job.train_cfg.batch_size, n),), generator=job.generator)
    return job.data.train.x[idx], job.data.train.y[idx]
