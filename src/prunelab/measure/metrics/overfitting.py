"""Overfitting monitor: the gap between training and validation accuracy and loss.

Reads the "train" and "val" splits passed to ``evaluate(..., splits=...)``. Fine-tuning a
pruned model on the training set can widen this gap; a level whose validation accuracy
holds while its train/val gap grows is memorising rather than generalising. To keep the cost
of one forward pass on the training set bounded, pass a subset (e.g.
``data.train.subset(len(data.val))``); the gap is then measured on equal-sized splits.
"""

from __future__ import annotations

import torch.nn.functional as F

from prunelab.measure.metrics.base import Evaluation, metric, predict


def _acc_loss(ev: Evaluation, split_name: str, metric_name: str) -> tuple[float, float]:
    key = f"overfitting:{split_name}"
    if key not in ev.cache:
        split = ev.need_split(split_name, metric_name)
        logits = predict(ev.model, split.x).double()
        acc = float((logits.argmax(1) == split.y).double().mean())
        ev.cache[key] = (acc, float(F.cross_entropy(logits, split.y)))
    return ev.cache[key]  # type: ignore[return-value]


@metric("train_val_gap", higher_is_better=False, fraction=True)
def train_val_gap(ev: Evaluation) -> float:
    """Train accuracy minus validation accuracy (positive = fits train better)."""
    return _acc_loss(ev, "train", "train_val_gap")[0] - _acc_loss(ev, "val", "train_val_gap")[0]


@metric("train_val_loss_gap", higher_is_better=False)
def train_val_loss_gap(ev: Evaluation) -> float:
    """Validation cross-entropy minus training cross-entropy (nats)."""
    return (
        _acc_loss(ev, "val", "train_val_loss_gap")[1]
        - _acc_loss(ev, "train", "train_val_loss_gap")[1]
    )
