"""Metrics (registry): each reads one :class:`Evaluation` and returns a float."""

from prunelab.measure.metrics import size as _size  # noqa: F401  (sparsity, nonzeros, params)
from prunelab.measure.metrics import task as _task  # noqa: F401  (accuracy, macro_f1, loss, agreement, kl)
from prunelab.measure.metrics.base import METRICS, Evaluation, Metric, evaluate, predict

__all__ = ["METRICS", "Evaluation", "Metric", "evaluate", "predict"]
from prunelab.measure.metrics import calibration as _calibration  # noqa: F401  (ece, nll, brier)
from prunelab.measure.metrics import classwise as _classwise  # noqa: F401  (worst_class_drop)
from prunelab.measure.metrics import efficiency as _efficiency  # noqa: F401  (macs, disk_bytes, ...)
from prunelab.measure.metrics import latency as _latency  # noqa: F401  (latency_b1_ms, ...)
from prunelab.measure.metrics import overfitting as _overfitting  # noqa: F401  (train_val_gap)
from prunelab.measure.metrics import robustness as _robustness  # noqa: F401  (robustness_gap)
