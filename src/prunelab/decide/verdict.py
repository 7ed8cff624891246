"""Does one level hold? The one question the level search (:mod:`prunelab.decide.tipping`) asks.

A *predicate* takes the dense controls' result rows and one configuration's rows at one level
(every seed and fold; per-example records where a rule wants them) and answers ``holds``,
``breaks`` or ``undecided`` at its tolerance and confidence, with the drop it saw. The search
knows nothing else about the rule, so a stricter rule is a new predicate, not a new search.

:func:`bootstrap_rule` is the rule :func:`prunelab.decide.analysis.recommend` applies today:
the ``confidence`` bootstrap interval over replicates of the paired drop vs dense (validation
split) must lie within ``max_drop`` to hold; it breaks when the whole interval lies above.
With one seed the interval is a point, so it is never undecided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from prunelab.decide.analysis import _paired, _statistic, bootstrap_ci
from prunelab.decide.interval import N_BOOT
from prunelab.decide.reference import RunRecords, choose_reference, resampled_evidence
from prunelab.decide.units import Units
from prunelab.errors import PrunelabError

Verdict = Literal["holds", "breaks", "undecided"]
EPS = 1e-12  # a drop of exactly the tolerance holds (float-safe)


@dataclass(frozen=True)
class Evidence:
    """A predicate's answer: the verdict and the drop vs dense it rests on (metric units,
    positive = worse), with its interval."""

    verdict: Verdict
    drop: float
    low: float
    high: float
    n: int  # replicates (seeds x folds) behind it


Predicate = Callable[[pd.DataFrame, pd.DataFrame], Evidence]  # (dense rows, cell rows)


def judge(low: float, high: float, max_drop: float) -> Verdict:
    """An interval of the drop against a tolerance.

    >>> judge(0.0, 0.004, 0.005), judge(0.006, 0.01, 0.005), judge(0.0, 0.01, 0.005)
    ('holds', 'breaks', 'undecided')
    """
    if high <= max_drop + EPS:
        return "holds"
    return "breaks" if low > max_drop + EPS else "undecided"


def bootstrap_rule(
    metric: str, max_drop: float, units: Units, confidence: float = 0.95, seed: int = 0
) -> Predicate:
    """The current recommendation's rule as a predicate on the validation split.

    ``max_drop`` is in the metric's units (0.005 = half an accuracy point).
    """
    column, sign = f"val_{metric}", units.sign(metric)

    def predicate(dense: pd.DataFrame, cells: pd.DataFrame) -> Evidence:
        if column not in cells.columns or column not in dense.columns or cells.empty:
            raise PrunelabError(f"the level search needs '{column}' in every cell's results")
        df = pd.concat([dense, cells], ignore_index=True)
        drops = _paired(df, column, sign)[df["method"] != "dense"]
        low, high = bootstrap_ci(drops.to_numpy(), confidence, seed=seed)
        return Evidence(judge(low, high, max_drop), float(drops.mean()), low, high, len(drops))

    return predicate


def records_rule(
    load: Callable[[pd.DataFrame], RunRecords],
    metric: str,
    max_drop: float,
    units: Units,
    confidence: float = 0.95,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> Predicate:
    """The recommendation's rule (:func:`prunelab.decide.analysis.recommend`) as a predicate:
    the one-sided ``confidence`` bounds of the paired drop vs the better of the original model
    and the dense control, bootstrapped over validation examples and seeds. ``load(rows)``
    gives the rows' per-example records; without them (or for a metric without a statistic)
    it falls back to :func:`bootstrap_rule`. Holds when the upper bound is within
    ``max_drop``, breaks when the lower bound is beyond it."""
    stat, sign = _statistic(units, metric), units.sign(metric)
    fallback = bootstrap_rule(metric, max_drop, units, confidence, seed)

    def predicate(dense: pd.DataFrame, cells: pd.DataFrame) -> Evidence:
        df = pd.concat([dense, cells], ignore_index=True)
        records = load(df) if stat is not None else None
        if records is None or not records.complete(df):
            return fallback(dense, cells)
        ref = choose_reference(df, stat, records, sign, confidence, n_boot, seed)
        ev = resampled_evidence(df, ["method"], stat, records, ref, sign, confidence, n_boot,
                                seed).iloc[0]  # fmt: skip
        lo, hi = float(ev["drop_lo"]), float(ev["drop_hi"])
        return Evidence(judge(lo, hi, max_drop), float(ev["drop"]), lo, hi, int(ev["n_seeds"]))

    return predicate
