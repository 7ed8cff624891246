"""Training and recovery fine-tuning. Masks applied by parametrization stay fixed throughout."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.training import Objective, StepCallback, TrainConfig, adam, mixed_precision

log = logging.getLogger(__name__)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return adam(params, cfg.optimizer == "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)


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
    device = next(model.parameters()).device
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s, total))
    model.train()
    step, running, count = 0, 0.0, 0
    while step < total:
        for batch in _batches(data, cfg, generator, task):
            opt.zero_grad(set_to_none=True)
            with mixed_precision(cfg.precision, device):
                loss = (
                    task.loss(model, batch)
                    if task is not None
                    else loss_fn(model(batch[0]), batch[1])
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
