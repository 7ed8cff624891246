"""Training and recovery fine-tuning. Masks applied by parametrization stay fixed throughout."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.sources.data.base import Split

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear", "cosine")
StepCallback = Callable[[int, int], None]  # (step, total_steps) -> None, called after each step


class Objective(Protocol):
    """What training needs of a task (:class:`prunelab.tasks.Task` satisfies it)."""

    def batches(self, split: Any, batch_size: int, generator: torch.Generator | None) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainConfig:
    """How to (re)train: ``epochs`` may be fractional (0.5 = half an epoch of steps).

    The learning rate follows ``schedule`` ("constant", "linear" decay to 0, "cosine" decay to
    0) after a linear ``warmup`` over that fraction of the steps (the usual transformer
    fine-tuning recipe is ``schedule = "linear", warmup = 0.1``)."""

    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 128
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.epochs) or self.epochs < 0:
            raise PrunelabError(f"fine-tune epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise PrunelabError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise PrunelabError(f"batch size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd", "adamw"):
            raise PrunelabError(f"unknown optimizer '{self.optimizer}'; valid: adam, adamw, sgd")
        if self.schedule not in SCHEDULES:
            raise PrunelabError(
                f"unknown lr schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}"
            )
        if not 0 <= self.warmup < 1:
            raise PrunelabError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")

    def identity(self) -> dict[str, Any]:
        """The fields that identify a training run (cache keys, cell ids). The schedule fields
        appear only when set, so keys made before they existed stay valid."""
        out = dict(self.__dict__)
        if self.schedule == "constant" and self.warmup == 0:
            del out["schedule"], out["warmup"]
        return out

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (0-based) of ``total``.

        >>> cfg = TrainConfig(schedule="linear", warmup=0.25)
        >>> [round(cfg.lr_factor(s, 8), 3) for s in range(8)]
        [0.5, 1.0, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167]
        """
        warm = math.ceil(self.warmup * total)
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "constant":
            return 1.0
        done = (step - warm) / max(total - warm, 1)  # 0 at the first step after warmup
        return 1 - done if self.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * done))

    def total_steps(self, n_examples: int) -> int:
        return math.ceil(self.epochs * math.ceil(n_examples / self.batch_size))


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    generator: torch.Generator,
    on_step: StepCallback | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    task: Objective | None = None,
) -> float:
    """Train ``model`` in place for ``cfg.epochs``; return the mean loss of the last epoch.

    Masked weights (see :mod:`prunelab.prune.apply`) receive zero gradient through the mask and
    remain exactly zero. ``on_step(step, total)`` runs after every optimizer step, which is
    where gradual schedules update their masks. With a ``task`` (any :class:`Objective`), its
    batches and loss are used; otherwise ``data`` is a classification ``Split`` and the loss is
    ``loss_fn(logits, labels)`` (cross-entropy by default).
    """
    total = cfg.total_steps(len(data))
    if total == 0:
        return float("nan")
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s, total))
    model.train()
    step, running, count = 0, 0.0, 0
    while step < total:
        for batch in _batches(data, cfg, generator, task):
            opt.zero_grad(set_to_none=True)
            loss = (
                task.loss(model, batch) if task is not None else loss_fn(model(batch[0]), batch[1])
            )
            if not torch.isfinite(loss):
                raise PrunelabError(f"training diverged: loss is {loss.item()} at step {step}")
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running, count = running + loss.item(), count + 1
            if on_step is not None:
                on_step(step, total)
            if step >= total:
                break
    model.eval()
    log.debug("trained %d steps, mean loss %.4f", step, running / max(count, 1))
    return running / max(count, 1)


def _batches(data: Any, cfg: TrainConfig, generator: torch.Generator, task: Objective | None):
    if task is not None:
        return task.batches(data, cfg.batch_size, generator)
    return data.batches(cfg.batch_size, shuffle=True, generator=generator)
