"""What a drop is measured against, and its paired bootstrap evidence per configuration.

Two dense models can be the reference: the *original* (the model as given, never fine-tuned)
and the *dense control* (the original fine-tuned with the same budget as every pruned cell, per
seed). The reference is the better of the two on the validation rows (point estimates, the
decision's metric); both values are kept for the report. Every cell stores per-example
validation records, and every dense control also stores the original's on the same rows, so
drops are paired example by example (:func:`prunelab.decide.interval.paired_draws`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prunelab.decide.interval import N_BOOT, Pair, paired_draws
from prunelab.errors import PrunelabError
from prunelab.measure.resampled import Records, Statistic, on_slice, size_of

ORIGINAL = "original model (as given)"
CONTROL = "dense control"


@dataclass(frozen=True)
class RunRecords:
    """A run's per-example validation records: each cell's own (``cells``, by cell id) and the
    original model's on the same rows (``originals``, by the id of the dense control that
    stored them); ``original`` holds the original model's stored metrics (test, ``val_*``)."""

    cells: Mapping[str, Records]
    originals: Mapping[str, Records]
    original: Mapping[str, float] = field(default_factory=dict)

    def complete(self, df: pd.DataFrame) -> bool:
        """Every row of ``df`` has records, and every dense control the original's."""
        if "cell_id" not in df.columns:
            return False
        dense = df["method"] == "dense"
        return all(c in self.cells for c in df["cell_id"]) and all(
            c in self.originals for c in df.loc[dense, "cell_id"]
        )


@dataclass(frozen=True)
class Referenced:
    """The chosen reference, both candidates' validation values, and the check that the dense
    control did not fall below the original by more than noise."""

    name: str  # ORIGINAL or CONTROL
    values: dict[str, float]  # {ORIGINAL: value, CONTROL: value} on the validation rows
    control_drop: tuple[float, float, float]  # control vs original: (drop, lower, upper)
    by_replicate: dict[tuple, Records]  # (seed, fold, ft_epochs) -> the reference's records

    def warning(self, metric: str, confidence: float) -> str:
        """One line when the dense control scores below the original beyond noise."""
        drop, lo, _ = self.control_drop
        if not lo > 0:
            return ""
        return (
            f"Warning: the dense control (the original fine-tuned with the recovery budget) "
            f"scores below the original model on validation: {metric} drop {drop:+.4f} "
            f"(lower {confidence:.0%} bound {lo:+.4f} > 0), so recovery damaged the dense "
            "model; drops are measured against the original."
        )


def _replicate(row: pd.Series) -> tuple:
    fold = int(row["fold"]) if "fold" in row and pd.notna(row["fold"]) else -1
    return int(row["seed"]), fold, float(row.get("ft_epochs", 0.0))


def choose_reference(
    df: pd.DataFrame,
    stat: Statistic,
    records: RunRecords,
    sign: float,
    confidence: float,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Referenced:
    """The better of the original and the dense control on validation (module docstring)."""
    dense = df[df["method"] == "dense"]
    ones = {}
    pairs, orig, ctrl = [], [], []
    for _, row in dense.iterrows():
        cid = row["cell_id"]
        mine, theirs = records.cells[cid], records.originals[cid]
        n = len(next(v for k, v in mine.items() if not k.startswith("det_")))
        w = ones.setdefault(n, np.ones((1, n)))
        ctrl.append(float(stat(mine, w)[0]))
        orig.append(float(stat(theirs, w)[0]))
        s, f, _ = _replicate(row)
        pairs.append(Pair(s, f, mine, theirs))
    values = {ORIGINAL: float(np.mean(orig)), CONTROL: float(np.mean(ctrl))}
    draws = paired_draws(stat, {"control": _one_per_replicate(pairs)}, sign, n_boot, seed)
    lo, hi = draws["control"].bounds(confidence)
    name = ORIGINAL if sign * (values[ORIGINAL] - values[CONTROL]) > 0 else CONTROL
    by_rep = {
        _replicate(row): records.originals[row["cell_id"]]
        if name == ORIGINAL
        else records.cells[row["cell_id"]]
        for _, row in dense.iterrows()
    }
    return Referenced(name, values, (draws["control"].drop, lo, hi), by_rep)


def _one_per_replicate(pairs: Sequence[Pair]) -> list[Pair]:
    """Dense controls of several fine-tune budgets share (seed, fold): keep the first."""
    seen: dict[tuple, Pair] = {}
    for p in pairs:
        seen.setdefault((p.seed, p.fold), p)
    return list(seen.values())


def resampled_evidence(
    df: pd.DataFrame,
    keys: list[str],
    stat: Statistic,
    records: RunRecords,
    ref: Referenced,
    sign: float,
    confidence: float,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Per configuration and level: point drop vs the reference, its one-sided bounds
    (``drop_lo``/``drop_hi``), the metric and its bounds, seeds and validation rows."""
    groups = {
        key: _on_common_slice(
            [
                Pair(*_replicate(row)[:2], records.cells[row["cell_id"]], _reference_of(ref, row))
                for _, row in g.iterrows()
            ]
        )
        for key, g in df[df["method"] != "dense"].groupby(keys, dropna=False)
    }
    draws = paired_draws(stat, groups, sign, n_boot, seed)
    rows = []
    for key, d in draws.items():
        lo, hi = d.bounds(confidence)
        vlo, vhi = d.value_bounds(confidence)
        rows.append(
            dict(zip(keys, key), n_seeds=d.n_seeds, rows=d.rows, value=d.value, drop=d.drop,
                 drop_lo=lo, drop_hi=hi, value_lo=vlo, value_hi=vhi)
        )  # fmt: skip
    return pd.DataFrame(rows)


def _on_common_slice(pairs: list[Pair]) -> list[Pair]:
    """A group's replicates cut to the rows all of them were measured on: a cell stopped early
    (:mod:`prunelab.decide.sequential`) holds a slice of the validation rows, so its reference's
    records are cut to that slice (and so are the other seeds' of the same fold)."""
    smallest: dict[int, int] = {}
    for p in pairs:
        smallest[p.fold] = min(smallest.get(p.fold, 1 << 62), size_of(p.cell))
    out = []
    for p in pairs:
        n, m = size_of(p.reference), smallest[p.fold]
        if size_of(p.cell) == n == m:
            out.append(p)
        else:
            out.append(Pair(p.seed, p.fold, on_slice(p.cell, n, m), on_slice(p.reference, n, m)))
    return out


def _reference_of(ref: Referenced, row: pd.Series) -> Records:
    """The reference's records on the rows this cell was measured on (same seed and fold; the
    same fine-tune budget for a dense control; else the first replicate of the fold)."""
    seed, fold, budget = _replicate(row)
    if (seed, fold, budget) in ref.by_replicate:
        return ref.by_replicate[(seed, fold, budget)]
    same_fold = [r for (s, f, _), r in sorted(ref.by_replicate.items()) if f == fold]
    if not same_fold:
        raise PrunelabError(f"no dense control measured fold {fold}: cannot pair the drop")
    return same_fold[0]
