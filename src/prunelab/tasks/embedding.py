"""Sentence embeddings as a task: the dense encoder's embeddings are the target.

A split is a :class:`~prunelab.sources.data.base.Split` of token ids (labels unused). Metrics
compare the pruned encoder's embeddings with the dense encoder's on the same sentences:
``cosine_to_dense`` (mean row-wise cosine, primary), ``cosine_min``, ``neighbour_overlap``
(top-10 nearest neighbours kept) and ``similarity_spearman`` (rank correlation of all pairwise
similarities). Recovery distils: the loss is ``1 - cos(model(x), dense(x))``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.measure.fidelity import cosine_to_reference, neighbour_kept, neighbour_overlap
from prunelab.measure.metrics import predict
from prunelab.measure.resampled import weighted_mean, weighted_min
from prunelab.sources.hfdir import load_sentence_encoder
from prunelab.tasks.base import MetricInfo, Task

METRICS = (
    MetricInfo(
        "cosine_to_dense", True, "mean cosine of each embedding to the dense one", True, 0.0
    ),
    MetricInfo("cosine_min", True, "worst sentence's cosine to its dense embedding", True),
    MetricInfo(
        "neighbour_overlap", True, "fraction of each sentence's 10 dense neighbours kept", True, 0.0
    ),
    MetricInfo("similarity_spearman", True, "rank correlation of pairwise similarities", True, 0.0),
)
PAIRS = 200_000  # pairwise similarities sampled for the rank correlation
#: per sentence: its cosine to the dense embedding and the share of its dense neighbours kept
#: (neighbours among the whole split; the rank correlation of all pairs is not resampled)
ROW_STATISTICS = {
    "cosine_to_dense": lambda r, w: weighted_mean(r["cosine"], w),
    "cosine_min": lambda r, w: weighted_min(r["cosine"], w),
    "neighbour_overlap": lambda r, w: weighted_mean(r["neighbours"], w),
}


def pairwise_spearman(emb: Tensor, ref: Tensor) -> float:
    """Spearman correlation between the upper-triangle cosine similarities of two embeddings.

    >>> r = torch.tensor([[1., 0.], [.6, .8], [0., 1.]])
    >>> round(pairwise_spearman(r, r), 6)
    1.0
    """
    e = nn.functional.normalize(emb.double(), dim=1)
    r = nn.functional.normalize(ref.double(), dim=1)
    i, j = torch.triu_indices(len(e), len(e), offset=1)  # (P,), (P,)
    if len(i) > PAIRS:
        keep = torch.randperm(len(i), generator=torch.Generator().manual_seed(0))[:PAIRS]
        i, j = i[keep], j[keep]
    a = (e[i] * e[j]).sum(1)  # (P,) cosine of each pair
    b = (r[i] * r[j]).sum(1)
    return float(spearmanr(a.cpu().numpy(), b.cpu().numpy()).statistic)


@dataclass(frozen=True)
class SentenceEmbeddingTask(Task):
    """Fidelity of a sentence encoder's embeddings to the dense encoder's.

    >>> t = SentenceEmbeddingTask()
    >>> t.primary, t.info("cosine_to_dense").higher_is_better
    ('cosine_to_dense', True)
    """

    kind: ClassVar[str] = "sentence-embedding"
    sequence_axis: ClassVar[int | None] = 1  # (N, T) token ids: T varies
    fidelity: ClassVar[str] = "neighbour_overlap"
    tolerance_points: ClassVar[float] = 1.0  # one point of mean cosine
    default_include: ClassVar[tuple[str, ...]] = ("*encoder.layer.*",)
    statistics: ClassVar[Mapping[str, Any]] = ROW_STATISTICS
    primary: str = "cosine_to_dense"
    teacher: nn.Module | None = None  # the dense encoder, frozen (set by with_dense)

    def __post_init__(self) -> None:
        self.info(self.primary)

    def with_dense(self, dense: nn.Module) -> Task:
        teacher = copy.deepcopy(dense).eval().requires_grad_(False)
        return replace(self, teacher=teacher)

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        return METRICS

    def model_from_directory(self, path: str) -> nn.Module:
        """A sentence-transformers directory (its pooling, normalisation) or a transformers
        one (mean pooling)."""
        return load_sentence_encoder(path)

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        return split.batches(batch_size, shuffle=generator is not None, generator=generator)

    def loss_of(self, outputs: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Recovery distils: ``1 - cos`` to the dense encoder's embeddings (no labels)."""
        if self.teacher is None:
            raise PrunelabError("sentence-embedding recovery distils from the dense encoder")
        with torch.no_grad():
            target = self.teacher(batch[0])  # (B, D) from (B, T) token ids
        return self.soft_loss(outputs, target, 1.0)

    def soft_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Mean ``1 - cos`` between student and teacher embeddings (B, D)."""
        return (1 - nn.functional.cosine_similarity(student, teacher, dim=1)).mean()

    def inputs(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return batch[0]

    def predict(self, model: nn.Module, split: Split) -> Tensor:
        return predict(model, split.x)  # (N, D) embeddings

    def evaluate(
        self, model: nn.Module, split: Split, reference: Any | None, outputs: Any | None = None
    ) -> dict[str, float]:
        """Fidelity metrics against ``reference`` (the dense embeddings); NaN without one."""
        if reference is None:
            return {m.name: float("nan") for m in METRICS}
        emb = self.predict(model, split) if outputs is None else outputs
        cos = cosine_to_reference(emb, reference)
        return {
            "cosine_to_dense": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "neighbour_overlap": neighbour_overlap(emb, reference, min(10, len(emb) - 1)),
            "similarity_spearman": pairwise_spearman(emb, reference),
        }

    def records(
        self, split: Split, outputs: Tensor, reference: Tensor | None
    ) -> dict[str, np.ndarray]:
        """Per sentence: cosine to the dense embedding, share of dense neighbours kept."""
        if reference is None:
            return {}
        k = min(10, len(outputs) - 1)
        return {
            "cosine": cosine_to_reference(outputs, reference).double().numpy(),
            "neighbours": neighbour_kept(outputs, reference, k).numpy(),
        }

    def example_input(self, split: Split, n: int = 1) -> Tensor:
        return split.x[:n]
