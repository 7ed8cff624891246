"""The sparsity to ship, as a value: what was chosen, against what, by which rule, with what
interval, and the words the CLI and the report print for it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Recommendation:
    """The sparsity to ship, or ``level=None`` when no level meets the tolerance.

    ``interval`` is (lower, upper) one-sided ``confidence`` bounds of the drop vs the reference
    on the selection split (metric units; with ``min_value``, of the metric): the upper one is
    what the rule tests. ``reference`` names what drops are measured against (the original
    model as given, or the dense control); ``references`` holds both candidates' values.
    ``test_*`` are evidence on the test split, never used to choose.
    """

    level: float | None
    config: dict[str, object] | None
    metric: str
    split: str
    tolerance: str
    confidence: float
    interval: tuple[float, float] | None
    value: float | None
    test_value: float | None
    test_interval: tuple[float, float] | None
    n_seeds: int
    evidence: pd.DataFrame
    reason: str
    requested: float | None = None  # the cells' requested level (differs when they stopped short)
    folds: int = 0  # k of k-fold cross-validation (0: one fixed validation split)
    reference: str = "dense control"
    references: dict[str, float] = field(default_factory=dict)
    rule: str = ""  # the decision rule in one sentence
    rows: int | None = None  # validation examples the decision read per seed (folds summed)
    tune_rows: int | None = None  # validation examples set apart for tuning (never decided on)
    warning: str = ""  # the dense control fell below the original beyond noise
    drop: float | None = None  # the point drop vs the reference

    @property
    def method(self) -> str | None:
        return None if self.config is None else str(self.config.get("method"))

    def _replicates(self) -> str:
        rows = f"{self.rows} validation rows x " if self.rows else ""
        if not self.folds:
            return f"{rows}{self.n_seeds} seed(s)"
        return (
            f"{rows}{self.n_seeds} seed(s), {self.folds}-fold cross-validation (each fold's "
            "held-out rows validate it, resampled within the fold)"
        )

    def reference_line(self) -> str:
        """Which dense model the drops are measured against, and both candidates' values."""
        if not self.references:
            return f"Reference: the {self.reference}."
        both = ", ".join(f"{k} {v:.4f}" for k, v in self.references.items())
        return f"Reference: the {self.reference}, the better on {self.split} ({both})."

    def summary(self) -> str:
        """One paragraph for the CLI and the report."""
        tail = " ".join(t for t in (self.rule, self.reference_line(), self.warning) if t)
        if self.level is None:
            return f"No level meets the tolerance ({self.tolerance}): {self.reason} {tail}"
        cfg = ", ".join(f"{k}={v}" for k, v in (self.config or {}).items())
        lo, hi = self.interval or (math.nan, math.nan)
        point = f" drop {self.drop:+.4f}," if self.drop is not None else ""
        text = (
            f"Ship sparsity {self.level:g} ({cfg}): {self.split} {self.metric} "
            f"{self.value:.4f},{point} {self.confidence:.0%} bounds [{lo:+.4f}, {hi:+.4f}] "
            f"({self.tolerance}; {self._replicates()})."
        )
        if self.requested is not None and abs(self.requested - self.level) > 1e-9:
            text += f" The cells asked for {self.requested:g} and stopped at {self.level:g}."
        if self.test_value is not None:
            text += f" Test {self.metric}: {self.test_value:.4f}."
        return " ".join(t for t in (text, self.reason, tail) if t)
