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
from prunelab.training import PRECISIONS, Objective, TrainConfig, mixed_precision


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


class ReplayedTeacher(nn.Module):
    """A causal LM teacher computed once per token window, then replayed from its top ``k``.

    Distilling for several epochs over the same windows runs the frozen teacher again on every
    step; this wrapper runs it once per distinct window and keeps only each position's top-``k``
    log-probabilities and their token ids (a few hundred kB per window instead of ``T·V``
    logits). Its forward returns logits whose softmax gives exactly those log-probabilities at
    those tokens and spreads the remaining mass evenly over the others: the causal-LM task's
    soft loss (KL over the dense top-k tokens plus one bin for the rest, temperature 1) is then
    the same as with the teacher itself. At another temperature the replay is not exact.
    ``precision="bf16"`` runs the teacher under bfloat16 autocast (the kept log-probabilities
    are float32 either way): about half the teacher's time on a CPU with bf16 units, for targets
    a little less exact.

    >>> from prunelab.tasks import CausalLMTask
    >>> lm = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))
    >>> class Wrap(nn.Module):
    ...     def __init__(self): super().__init__(); self.m = lm
    ...     def forward(self, input_ids, **kw): return self.m(input_ids)
    >>> teacher, ids, task = Wrap(), torch.randint(0, 50, (2, 6)), CausalLMTask(top_k=8)
    >>> student = torch.randn(2, 6, 50)
    >>> a = task.soft_loss(student, teacher(ids), 1.0)
    >>> b = task.soft_loss(student, ReplayedTeacher(teacher, k=8)(input_ids=ids), 1.0)
    >>> bool(torch.allclose(a, b, atol=1e-6))
    True
    """

    def __init__(self, teacher: nn.Module, k: int = 64, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise PrunelabError(f"teacher precision must be one of {PRECISIONS}, got {precision!r}")
        self.teacher, self.k, self.precision = teacher, k, precision
        self.memo: dict[bytes, tuple[Tensor, Tensor]] = {}
        self.computed, self.vocab = 0, 0  # windows the teacher really ran on; its vocabulary

    @torch.no_grad()
    def forward(self, input_ids: Tensor, **_: Any) -> Tensor:
        keys = [row.numpy().tobytes() for row in input_ids]  # (T,) ids -> bytes
        new = [i for i, key in enumerate(keys) if key not in self.memo]
        if new:
            with mixed_precision(self.precision, input_ids.device):
                out = self.teacher(input_ids=input_ids[new], use_cache=False)
            logits = out.logits if hasattr(out, "logits") else out  # (b, T, V)
            self.vocab = logits.shape[-1]
            top = torch.log_softmax(logits.float(), dim=-1).topk(min(self.k, self.vocab), dim=-1)
            for j, i in enumerate(new):
                self.memo[keys[i]] = (top.values[j].clone(), top.indices[j].clone())  # (T, k)
            self.computed += len(new)
        vocab = self.vocab
        top_logp = torch.stack([self.memo[key][0] for key in keys])  # (B, T, k)
        top_ids = torch.stack([self.memo[key][1] for key in keys])
        rest = (1 - top_logp.double().exp().sum(-1)).clamp(min=1e-30)  # (B, T)
        fill = (rest / max(vocab - top_ids.shape[-1], 1)).log().float()  # each other token
        out = fill.unsqueeze(-1).expand(*fill.shape, vocab).clone()  # (B, T, V)
        return out.scatter_(-1, top_ids, top_logp)
