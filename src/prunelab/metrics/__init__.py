"""Metrics (registry): each reads one :class:`Evaluation` and returns a float."""

from prunelab.metrics.base import METRICS, Evaluation, Metric, evaluate, predict
from prunelab.metrics import task as _task  # noqa: F401  (accuracy, macro_f1, loss, agreement, kl)
from prunelab.metrics import size as _size  # noqa: F401  (sparsity, nonzeros, params)

__all__ = ["METRICS", "Evaluation", "Metric", "evaluate", "predict"]
from prunelab.metrics import efficiency as _efficiency  # noqa: F401  (macs, disk_bytes, ...)
from prunelab.metrics import calibration as _calibration  # noqa: F401  (ece, nll, brier)
from prunelab.metrics import classwise as _classwise  # noqa: F401  (worst_class_drop)
from prunelab.metrics import overfitting as _overfitting  # noqa: F401  (train_val_gap)
from prunelab.metrics import robustness as _robustness  # noqa: F401  (robustness_gap)
