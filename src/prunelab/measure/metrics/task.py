"""Task quality and fidelity to the dense model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunelab.measure.metrics.base import Evaluation, metric


@metric("accuracy", higher_is_better=True, fraction=True)
def accuracy(ev: Evaluation) -> float:
    """Top-1 accuracy."""
    return float((ev.preds == ev.labels).float().mean())


@metric("macro_f1", higher_is_better=True, fraction=True)
def macro_f1(ev: Evaluation) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    k = ev.logits.shape[1]
    pred, y = ev.preds, ev.labels
    tp = torch.bincount(y[pred == y], minlength=k).double()
    n_pred = torch.bincount(pred, minlength=k).double()
    n_true = torch.bincount(y, minlength=k).double()
    present = (n_pred + n_true) > 0
    f1 = 2 * tp / (n_pred + n_true).clamp(min=1)
    return float(f1[present].mean())


@metric("loss", higher_is_better=False)
def loss(ev: Evaluation) -> float:
    """Mean cross-entropy (negative log-likelihood of the true label)."""
    return float(F.cross_entropy(ev.logits.double(), ev.labels))


@metric("agreement", higher_is_better=True, needs_reference=True, fraction=True)
def agreement(ev: Evaluation) -> float:
    """Fraction of examples where pruned and dense models predict the same class."""
    return float((ev.preds == ev.need_reference("agreement").argmax(1)).float().mean())


@metric("kl", higher_is_better=False, needs_reference=True)
def kl(ev: Evaluation) -> float:
    """Mean KL(dense || pruned) of the predictive distributions, in nats."""
    ref = F.log_softmax(ev.need_reference("kl").double(), dim=1)
    cur = F.log_softmax(ev.logits.double(), dim=1)
    value = F.kl_div(cur, ref, log_target=True, reduction="batchmean")
    return max(float(value), 0.0)
