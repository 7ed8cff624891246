"""Recovery objectives for classifiers: cross-entropy, optionally distilled from the dense model.

:class:`Distillation` satisfies :class:`prunelab.recover.finetune.Objective`, so
``train(model, split, cfg, generator, task=Distillation(...))`` uses it. The loss is
``alpha · CE(labels) + (1 − alpha) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``
(Hinton et al. 2015); without teacher logits it is plain cross-entropy. With ``lengths`` (for
token-id inputs) the batches group rows of similar length, which a model that trims padding
(:class:`prunelab.nlp.encoder.TextEncoder`) computes faster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import predict
from prunelab.sources.data.base import Split
from prunelab.sources.data.text import length_batches


@dataclass(frozen=True)
class Distillation:
    """Training objective over a fixed split; ``teacher`` (N, K) rows follow the split's rows.

    >>> m = nn.Linear(3, 2)
    >>> split = Split(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    >>> obj = Distillation(teacher=m(split.x).detach(), alpha=0.0)
    >>> batch = next(iter(obj.batches(split, 8, None)))
    >>> round(float(obj.loss(m, batch).detach()), 6)
    0.0
    """

    teacher: Tensor | None = None  # (N, K) dense logits of the training rows
    alpha: float = 0.5
    temperature: float = 2.0
    lengths: Tensor | None = None  # (N,) per-row lengths for length-grouped batches

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise PrunelabError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise PrunelabError(f"temperature must be > 0, got {self.temperature}")

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(x, y, teacher logits or an empty tensor) per batch; shuffled with a generator."""
        n = len(split)
        for given in (self.teacher, self.lengths):
            if given is not None and len(given) != n:
                raise PrunelabError(f"objective has {len(given)} rows, the split {n}")
        if self.lengths is not None:
            order = length_batches(self.lengths, batch_size, generator)
        else:
            perm = torch.randperm(n, generator=generator) if generator else torch.arange(n)
            order = list(perm.split(batch_size))
        for idx in order:
            t = self.teacher[idx] if self.teacher is not None else torch.empty(0)
            yield split.x[idx], split.y[idx], t

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, teacher = batch
        logits = model(x)  # (B, K)
        ce = nn.functional.cross_entropy(logits, y)
        if self.teacher is None or self.alpha == 1.0:
            return ce
        t = self.temperature
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        return self.alpha * ce + (1 - self.alpha) * t * t * kd

    def inputs(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return batch[0]


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, batch_size: int = 64, lengths: Tensor | None = None
) -> Tensor:
    """(N, K) float logits in row order, in eval mode; batches grouped by ``lengths`` when
    given (:func:`prunelab.measure.metrics.base.predict`)."""
    if not len(x):
        raise PrunelabError("predict_logits needs at least one row")
    return predict(model, x, batch_size, lengths).float()
