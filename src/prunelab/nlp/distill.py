"""Short recovery: distil the pruned encoder toward the dense embeddings on unlabeled text.

Masks stay fixed (the core :func:`prunelab.recover.finetune.train` loop is reused); physically
shrunk encoders are trained as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.nlp.encoder import TextEncoder
from prunelab.recover.finetune import TrainConfig, train
from prunelab.sources.data.base import Split


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings: ``loss`` is "cosine" (1 − cos) or "mse" (on embeddings)."""

    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    loss: str = "cosine"
    dropout: bool = False  # keep the model's dropout active while training

    def __post_init__(self) -> None:
        if self.loss not in ("cosine", "mse"):
            raise PrunelabError(f"unknown distillation loss '{self.loss}'; valid: cosine, mse")


def distill_loss(kind: str):
    """``loss(student (B, D), teacher (B, D)) -> scalar``."""
    if kind == "cosine":
        return lambda s, t: (1 - nn.functional.cosine_similarity(s, t, dim=1)).mean()
    return lambda s, t: nn.functional.mse_loss(s, t) * s.shape[1]


def distill(
    encoder: TextEncoder,
    sentences: Sequence[str],
    teacher: Tensor,
    cfg: DistillConfig,
    generator: torch.Generator,
) -> float:
    """Train ``encoder`` in place so its embeddings of ``sentences`` match ``teacher`` (N, D).

    Returns the mean loss over the last epoch.
    """
    if teacher.shape[0] != len(sentences):
        raise PrunelabError(f"{len(sentences)} sentences but {teacher.shape[0]} teacher rows")
    ids = encoder.tokenize(sentences)  # (N, T); batches are trimmed to their longest row
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adamw", batch_size=cfg.batch_size)
    saved = {m: m.p for m in encoder.modules() if isinstance(m, nn.Dropout)}
    if not cfg.dropout:
        for m in saved:
            m.p = 0.0
    try:
        return train(
            encoder, Split(ids, teacher.detach()), tc, generator, loss_fn=distill_loss(cfg.loss)
        )
    finally:
        for m, p in saved.items():
            m.p = p
