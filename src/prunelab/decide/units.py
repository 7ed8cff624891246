"""Direction and units of a run's metrics, read from the one place that defines them: the task
description stored with the run (:meth:`prunelab.tasks.Task.describe`).

Every reader — recommendation, tipping points, report, summary, CLI — asks a :class:`Units`
whether a metric is better higher or lower, whether it is a fraction (so a tolerance is given in
percentage points), what the task's default tolerance is, and whether a tolerance would accept a
dead model (mAP 0, chance accuracy).

>>> u = Units.from_task({"kind": "detection", "primary": "map50", "tolerance": 0.01,
...     "metrics": {"map50": {"higher_is_better": True, "fraction": True, "dead": 0.0}}})
>>> u.max_drop(0.5, "map50"), u.describe_tolerance(0.005, "map50")
(0.005, '0.5 points of map50 (0.005)')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunelab.errors import PrunelabError

PREFIXES = ("val_", "oneshot_", "train_", "dense_")


@dataclass(frozen=True)
class MetricUnit:
    higher_is_better: bool
    fraction: bool = False
    dead: float | None = None


@dataclass(frozen=True)
class Units:
    """The metric table of one run: direction, units and dead value of each column."""

    metrics: Mapping[str, MetricUnit]
    primary: str = "accuracy"
    kind: str = "classification"
    fidelity: str = "agreement"
    tolerance: float | None = None  # the task's default max drop of the primary, metric units

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> Units:
        """From a stored task description (runs before units stored ``{name: bool}``)."""
        metrics = {}
        for name, info in task.get("metrics", {}).items():
            if isinstance(info, Mapping):
                metrics[name] = MetricUnit(
                    bool(info["higher_is_better"]), bool(info.get("fraction")), info.get("dead")
                )
            else:  # a stored direction only
                metrics[name] = MetricUnit(bool(info), name in _OLD_FRACTIONS)
        return cls(
            metrics,
            task.get("primary", "accuracy"),
            task.get("kind", "classification"),
            task.get("fidelity", "agreement"),
            task.get("tolerance"),
        )

    def unit(self, metric: str) -> MetricUnit:
        base = metric
        for p in PREFIXES:
            base = base.removeprefix(p)
        if base not in self.metrics:
            raise PrunelabError(
                f"unknown metric '{metric}'; this run has: {', '.join(sorted(self.metrics))}"
            )
        return self.metrics[base]

    def higher_is_better(self, metric: str) -> bool:
        return self.unit(metric).higher_is_better

    def sign(self, metric: str) -> float:
        """+1 when higher is better, -1 otherwise (multiply to make "higher is better")."""
        return 1.0 if self.higher_is_better(metric) else -1.0

    def directions(self) -> dict[str, bool]:
        return {n: u.higher_is_better for n, u in self.metrics.items()}

    def max_drop(self, given: float | None, metric: str) -> float | None:
        """A tolerance as the user gives it (points for a fraction, else metric units) in the
        metric's units; None stays None."""
        if given is None:
            return None
        if not math.isfinite(given) or given < 0:
            raise PrunelabError(f"max drop must be a number >= 0, got {given}")
        return given / 100 if self.unit(metric).fraction else given

    def describe_tolerance(self, max_drop: float, metric: str) -> str:
        """``'0.5 points of accuracy (0.005)'`` or ``'1.3 perplexity'``."""
        if self.unit(metric).fraction:
            return f"{100 * max_drop:g} points of {metric} ({max_drop:g})"
        return f"{max_drop:.4g} {metric}"

    def check_alive(self, metric: str, max_drop: float, dense_value: float | None) -> None:
        """Refuse, in one line, a tolerance that would accept a model at the metric's dead
        value (mAP 0, chance accuracy)."""
        dead = self.unit(metric).dead
        if dead is None or dense_value is None or not math.isfinite(dense_value):
            return
        edge = dense_value - self.sign(metric) * max_drop
        if self.sign(metric) * (edge - dead) <= 1e-12:
            raise PrunelabError(
                f"a tolerance of {self.describe_tolerance(max_drop, metric)} accepts a dead "
                f"model: dense {metric} is {dense_value:.4g} and a model that lost everything "
                f"scores {dead:.4g}; give a smaller --max-drop"
            )


_OLD_FRACTIONS = frozenset({"accuracy", "macro_f1", "agreement"})  # runs before units


def tolerance_of(units: Units, metric: str, max_drop: float | None) -> float:
    """A tolerance as given (points for a fraction, else the metric's units) in metric units;
    without one, the task's default for its primary metric (0.5 points for other fractions)."""
    if max_drop is not None:
        return units.max_drop(max_drop, metric)  # type: ignore[return-value]
    if metric == units.primary and units.tolerance is not None:
        return units.tolerance
    if units.unit(metric).fraction:
        return 0.005
    raise PrunelabError(f"'{metric}' has no default tolerance: give --max-drop in its units")
