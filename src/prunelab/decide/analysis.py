"""Reading a sweep's results: the tipping point of each curve and the sparsity to ship.

Both work on the tidy results table of :func:`prunelab.sweep.store.load_results` (one row per cell;
``method == "dense"`` rows are the per-seed dense controls). Units: every tolerance is in the
metric's own units; accuracy-like metrics are fractions, so 0.5 percentage points is
``max_drop=0.005`` (:func:`points` converts). A *drop* is always "how much worse than dense"
(positive = worse), whatever the metric's direction.

**Tipping point rule** (:func:`knee`), chosen to be robust with 5-10 ladder points and few
seeds: average the seeds at each level and take the drop from the dense (lowest) level. The
noise band is ``tau = max(z * sigma * sqrt(2 / k), min_fall)`` where ``sigma`` is the pooled
seed standard deviation over levels whose own std is at most 3x the median (``k`` seeds per
level; the sqrt term is the std of a difference of two
k-seed means) and ``min_fall`` a floor for single-seed curves. The *onset* is the first level
from which the drop stays above ``tau`` at every higher level (a sustained exit, so one noisy
point cannot trigger it); the *knee* is the level just before the onset, the last level still
indistinguishable from dense. No onset -> no knee (the curve never falls in the measured range).

**Levels are what a cell achieved** (:func:`credited_levels`): a cell that stopped short of its
requested level (the adaptive schedule stops when the tolerance breaks) is credited with the
sparsity it reached, floored to a 0.001 grid, never with its ceiling. Knees and
recommendations are read on those levels; the requested level stays in ``requested``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from prunelab.decide.interval import N_BOOT
from prunelab.decide.levels import credit as _credit
from prunelab.decide.recommendation import Recommendation
from prunelab.decide.reference import (
    ORIGINAL,
    Referenced,
    RunRecords,
    choose_reference,
    resampled_evidence,
)
from prunelab.decide.units import Units
from prunelab.errors import PrunelabError
from prunelab.tasks import TASKS, make_task

log = logging.getLogger(__name__)
CONFIG_COLUMNS = ("method", "allocation", "structure", "schedule", "ft_epochs")


def points(p: float) -> float:
    """Percentage points to a fraction: ``points(0.5) == 0.005`` (CLI ``--max-drop 0.5``)."""
    return p / 100.0


def default_units() -> Units:
    """Units of a classification run (the default task), from its metric infos."""
    return Units.from_task(make_task().describe())


@dataclass(frozen=True)
class Knee:
    """Tipping point of one curve (levels are target sparsities)."""

    level: float | None  # last level within the noise band before the sustained fall
    onset: float | None  # first level of the sustained fall
    band: float  # tolerance tau, metric units
    noise: float  # pooled per-seed std used for the band
    reason: str


def _by_level(levels: Sequence[float], values: Sequence[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"level": np.asarray(levels, float), "value": np.asarray(values, float)})
    if frame.empty or not np.isfinite(frame.to_numpy()).all():
        raise PrunelabError("a curve needs finite levels and values")
    return frame.groupby("level")["value"].agg(["mean", "std", "count"]).reset_index()


def knee(
    levels: Sequence[float],
    values: Sequence[float],
    higher_is_better: bool = True,
    noise: float | None = None,
    z: float = 3.0,
    min_fall: float = 0.005,
) -> Knee:
    """The tipping point of a metric-vs-sparsity curve (rule in the module docstring).

    Repeated levels are seeds. ``noise`` overrides the pooled seed std.

    >>> knee([0, .5, .8, .9, .95, .98], [.91, .91, .908, .905, .85, .6]).level
    0.9
    >>> knee([0, .5, .8], [.91, .91, .909]).level is None
    True
    """
    g = _by_level(levels, values)
    if len(g) < 3:
        raise PrunelabError(f"a knee needs at least 3 distinct levels, got {len(g)}")
    sign = 1.0 if higher_is_better else -1.0
    drop = sign * (g["mean"].iloc[0] - g["mean"]).to_numpy()
    k = int(g["count"].min())
    if noise is None:
        multi = g[g["count"] > 1]
        # Levels whose seed std exceeds 3x the median (a collapsed high-sparsity region where
        # seeds scatter widely) are left out, so they cannot widen the band everywhere and hide
        # an earlier fall; the rest are pooled (root mean square, weighted by dof).
        calm = multi[multi["std"] <= 3 * multi["std"].median() + 1e-12] if len(multi) else multi
        noise = (
            float(np.sqrt(np.average(calm["std"] ** 2, weights=calm["count"] - 1)))
            if len(calm)
            else 0.0
        )
    tau = max(z * noise * math.sqrt(2.0 / k), min_fall)
    above = drop > tau + 1e-12  # float-safe: a drop of exactly tau is inside the band
    sustained = np.flip(np.cumprod(np.flip(above))).astype(bool)  # above here and at all higher
    if not sustained[1:].any():
        return Knee(None, None, tau, noise, f"drop never leaves the noise band {tau:.4g}")
    j = int(np.argmax(sustained[1:])) + 1
    lv = g["level"].to_numpy()
    return Knee(
        float(lv[j - 1]),
        float(lv[j]),
        tau,
        noise,
        f"drop exceeds {tau:.4g} from level {lv[j]:g} on",
    )


def _column(metric: str, split: str) -> str:
    if split not in ("val", "test"):
        raise PrunelabError(f"split must be 'val' or 'test', got '{split}'")
    return f"val_{metric}" if split == "val" else metric


def _check_results(df: pd.DataFrame, column: str) -> list[str]:
    """Validate the results table; return the configuration columns present."""
    needed = {"method", "level", "seed", column}
    missing = needed - set(df.columns)
    if missing:
        raise PrunelabError(f"results lack columns {sorted(missing)}; have {sorted(df.columns)}")
    for col in ("model", "dataset"):
        if col in df.columns and df[col].nunique() > 1:
            raise PrunelabError(
                f"results hold several {col}s ({sorted(df[col].unique())}); filter to one first"
            )
    if not (df["method"] == "dense").any():
        raise PrunelabError("results have no dense control rows (method 'dense')")
    return [c for c in CONFIG_COLUMNS if c in df.columns]


def tipping_points(
    df: pd.DataFrame,
    metric: str = "accuracy",
    split: str = "val",
    units: Units | None = None,
    **knee_kw: float,
) -> pd.DataFrame:
    """One :func:`knee` per configuration curve, the dense controls as level 0 of each, on
    the levels the cells achieved (:func:`credited_levels`).

    Returns columns: the configuration columns, ``knee``, ``onset``, ``band``, ``noise``.
    """
    column = _column(metric, split)
    config = _check_results(df, column)
    df = _credit(df)
    units = units or default_units()
    hib = units.higher_is_better(metric)
    dense = df[df["method"] == "dense"]
    if "min_fall" not in knee_kw and not units.unit(metric).fraction:  # 0.5 % of dense
        knee_kw["min_fall"] = 0.005 * abs(float(dense[column].mean()))
    rows = []
    for key, g in df[df["method"] != "dense"].groupby(config, dropna=False):
        ref = dense
        if "ft_epochs" in config and (dense["ft_epochs"] == g["ft_epochs"].iloc[0]).any():
            ref = dense[dense["ft_epochs"] == g["ft_epochs"].iloc[0]]  # same fine-tune budget
        names = dict(zip(config, key if isinstance(key, tuple) else (key,)))
        if g["level"].nunique() < 2:  # one level (an N:M pattern): no curve to bend
            rows.append(dict(names, knee=None, onset=None, band=None, noise=None))
            continue
        k = knee(
            np.r_[np.zeros(len(ref)), g["level"]], np.r_[ref[column], g[column]], hib, **knee_kw
        )
        rows.append(dict(names, knee=k.level, onset=k.onset, band=k.band, noise=k.noise))
    return pd.DataFrame(rows)


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (over seeds); a point when n == 1.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    v = torch.tensor(np.asarray(values, float))
    if v.numel() == 0:
        raise PrunelabError("bootstrap needs at least one value")
    if not 0.5 <= confidence < 1.0:
        raise PrunelabError(f"confidence must be in [0.5, 1), got {confidence}")
    if v.numel() == 1:
        return float(v[0]), float(v[0])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)  # (n_boot, n)
    means = v[idx].mean(1)
    a = (1.0 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1 - a], dtype=means.dtype)).tolist()
    return float(lo), float(hi)


def _paired(df: pd.DataFrame, column: str, sign: float) -> pd.Series:
    """Per row: drop vs the dense control of the same seed and fold (and fine-tune budget).

    A seed without its own dense control falls back to the mean dense value (of the same
    fine-tune budget when known).
    """
    dense = df[df["method"] == "dense"]
    keys = [c for c in ("seed", "fold", "ft_epochs") if c in df.columns]
    ref = dense.groupby(keys, as_index=False)[column].mean().rename(columns={column: "_d"})
    d = df[keys].merge(ref, on=keys, how="left")["_d"]
    if "ft_epochs" in keys:
        by_budget = dense.groupby("ft_epochs")[column].mean()
        d = d.fillna(df["ft_epochs"].map(by_budget).reset_index(drop=True))
    d = d.fillna(dense[column].mean())
    return pd.Series(sign * (d.to_numpy() - df[column].to_numpy()), index=df.index)


def _check_tolerance(
    units: Units, metric: str, max_drop: float | None, min_value: float | None, dense: float
) -> str:
    if (max_drop is None) == (min_value is None):
        raise PrunelabError("give exactly one of max_drop or min_value")
    fraction = units.unit(metric).fraction
    if max_drop is not None:
        if not max_drop >= 0:
            raise PrunelabError(f"max_drop must be >= 0, got {max_drop}")
        if fraction and max_drop >= 1:
            raise PrunelabError(
                f"max_drop is in {metric} units (a fraction), got {max_drop}; "
                f"for percentage points use points({max_drop:g})"
            )
        if fraction and max_drop > 0.1:
            log.warning(
                "max_drop %g is %g percentage points of %s; is that intended?",
                max_drop,
                100 * max_drop,
                metric,
            )
        units.check_alive(metric, max_drop, dense)
        return f"max drop {units.describe_tolerance(max_drop, metric)}"
    if not units.higher_is_better(metric):
        raise PrunelabError(
            f"min_value needs a higher-is-better metric; {metric} is lower-is-better: use max_drop"
        )
    return f"{metric} >= {min_value:g}"


def _evidence(
    df: pd.DataFrame,
    config: list[str],
    metric: str,
    column: str,
    confidence: float,
    seed: int,
    sign: float = 1.0,
) -> pd.DataFrame:
    df = df.assign(_drop=_paired(df, column, sign))
    has_test = metric in df.columns and column != metric
    if has_test:
        df = df.assign(_test_drop=_paired(df, metric, sign))
    rows = []
    keys = config + ["level", "requested"]
    for key, g in df[df["method"] != "dense"].groupby(keys, dropna=False):
        row = dict(zip(keys, key))
        lo, hi = bootstrap_ci(g["_drop"], confidence, seed=seed)
        mlo, mhi = bootstrap_ci(g[column], confidence, seed=seed)
        row.update(
            n_seeds=len(g),
            value=g[column].mean(),
            drop=g["_drop"].mean(),
            drop_lo=lo,
            drop_hi=hi,
            value_lo=mlo,
            value_hi=mhi,
        )
        if has_test:
            tlo, thi = bootstrap_ci(g["_test_drop"], confidence, seed=seed)
            row.update(
                test_value=g[metric].mean(),
                test_drop=g["_test_drop"].mean(),
                test_drop_lo=tlo,
                test_drop_hi=thi,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def recommend(
    df: pd.DataFrame,
    metric: str = "accuracy",
    max_drop: float | None = None,
    min_value: float | None = None,
    confidence: float = 0.95,
    split: str = "val",
    seed: int = 0,
    units: Units | None = None,
    records: RunRecords | None = None,
    n_boot: int = N_BOOT,
) -> Recommendation:
    """Highest sparsity whose metric holds with confidence, and the configuration reaching it.

    Tolerances are in metric units (``max_drop=0.005`` = 0.5 accuracy points; see
    :func:`points`). The rule is a one-sided non-inferiority test: a level *holds* when the
    upper ``confidence`` bound of its drop vs the reference is <= ``max_drop`` (or the lower
    bound of its metric is >= ``min_value``) on ``split`` ('val' chooses without looking at
    test; test numbers are reported as evidence). With per-example ``records`` (every sweep
    stores them) the bound comes from a paired bootstrap over the validation examples and the
    seeds (:mod:`prunelab.decide.interval`), and the reference is the better of the original
    model and the dense control (:mod:`prunelab.decide.reference`); without them (runs before
    records, a metric without a statistic, the test split) from a bootstrap over seeds alone
    against the dense control (its two-sided interval's upper end, as before). A
    configuration's usable levels are those holding at every lower level too (a contiguous run
    from dense). Ties between configurations at the same level go to the better mean metric.
    Levels are those the cells achieved (:func:`credited_levels`).
    """
    units = units or default_units()
    sign = units.sign(metric)
    if not 0.5 <= confidence < 1.0:
        raise PrunelabError(f"confidence must be in [0.5, 1), got {confidence}")
    folds = int(df["folds"].max()) if "folds" in df.columns and df["folds"].notna().any() else 0
    column = _column(metric, split)
    config = _check_results(df, column)
    dense_value = float(df.loc[df["method"] == "dense", column].mean())
    tolerance = _check_tolerance(units, metric, max_drop, min_value, dense_value)
    df = _credit(df)
    stat = _statistic(units, metric)
    keys = config + ["level", "requested"]
    resampled = split == "val" and stat is not None and records is not None
    resampled = resampled and records.complete(df)  # type: ignore[union-attr]
    ref = None
    if resampled:
        ref = choose_reference(df, stat, records, sign, confidence, n_boot, seed)
        ev = resampled_evidence(df, keys, stat, records, ref, sign, confidence, n_boot, seed)
        ev = ev.merge(_test_evidence(df, keys, metric, column, ref, records, sign, confidence,
                                     seed), on=keys, how="left")  # fmt: skip
    else:
        ev = _evidence(df, config, metric, column, confidence, seed, sign)
    if ev.empty:
        raise PrunelabError("results have no pruned rows (only dense controls)")
    ev["holds"] = (
        ev["drop_hi"] <= max_drop + 1e-12
        if max_drop is not None
        else ev["value_lo"] >= min_value - 1e-12
    )
    ev = ev.sort_values(keys).reset_index(drop=True)
    ev["usable"] = ev.groupby(config, dropna=False)["holds"].cummin()
    context = _context(df, ev, ref, metric, split, confidence, resampled, max_drop is not None)
    return _chosen(ev, config, metric, split, tolerance, confidence, sign, max_drop, folds, context)


def _statistic(units: Units, metric: str):
    """The task kind's statistic for ``metric`` (None: not recomputable from records)."""
    if units.kind not in TASKS:
        return None
    return TASKS.get(units.kind).statistic(metric)


def _context(
    df: pd.DataFrame,
    ev: pd.DataFrame,
    ref: Referenced | None,
    metric: str,
    split: str,
    confidence: float,
    resampled: bool,
    by_drop: bool,
) -> dict[str, object]:
    """The recommendation's reference, rule sentence, rows and warning."""
    tune = df["tune_rows"].dropna() if "tune_rows" in df.columns else pd.Series(dtype=float)
    out: dict[str, object] = {"tune_rows": int(tune.iloc[0]) if len(tune) else None}
    what = "its drop vs the reference" if by_drop else f"its {metric}"
    bound = "upper" if by_drop else "lower"
    if resampled and ref is not None:
        rows = int(ev["rows"].max())
        out.update(reference=ref.name, references=ref.values, rows=rows,
                   warning=ref.warning(metric, confidence))  # fmt: skip
        tuned = (
            f"; {out['tune_rows']} further validation rows tuned the allocation/schedule and "
            "are never read by the decision"
            if out["tune_rows"]
            else ""
        )
        out["rule"] = (
            f"Rule: a one-sided non-inferiority test at {confidence:.0%} confidence: a level "
            f"holds when the {bound} {confidence:.0%} bound of {what} (paired bootstrap over "
            f"the {rows} {split} rows and the seeds) is within the tolerance, every lower level "
            f"holding too{tuned}."
        )
    else:
        out["rule"] = (
            f"Rule: a level holds when the {confidence:.0%} bootstrap interval over seeds of "
            f"{what} (the dense control; {split} rows not resampled: no per-example records) "
            "is within the tolerance, every lower level holding too."
        )
    return out


def _test_evidence(
    df: pd.DataFrame,
    keys: list[str],
    metric: str,
    column: str,
    ref: Referenced,
    records: RunRecords,
    sign: float,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """Test value and drop (vs the same reference; a seed interval) per group, as evidence."""
    if metric not in df.columns or column == metric:
        return pd.DataFrame(columns=keys)
    if ref.name == ORIGINAL and metric in records.original:
        test_drop = sign * (records.original[metric] - df[metric])
    else:
        test_drop = _paired(df, metric, sign)
    df = df.assign(_test_drop=test_drop)
    rows = []
    for key, g in df[df["method"] != "dense"].groupby(keys, dropna=False):
        tlo, thi = bootstrap_ci(g["_test_drop"], confidence, seed=seed)
        rows.append(dict(zip(keys, key), test_value=g[metric].mean(),
                         test_drop=g["_test_drop"].mean(), test_drop_lo=tlo, test_drop_hi=thi))
    return pd.DataFrame(rows)  # fmt: skip


def _chosen(
    ev: pd.DataFrame,
    config: list[str],
    metric: str,
    split: str,
    tolerance: str,
    confidence: float,
    sign: float,
    max_drop: float | None,
    folds: int,
    context: dict,
) -> Recommendation:
    """The recommendation from the evidence table (or why there is none)."""
    ok = ev[ev["usable"]]
    note = "" if split == "val" else "Chosen on the test split: the estimate is optimistic."
    if ok.empty:
        best = ev.loc[ev["drop"].idxmin()]
        reason = (
            f"even the best pruned cell (level {best['level']:g}) drops "
            f"{best['drop']:.4g} (bound {best['drop_hi']:.4g})."
        )
        return Recommendation(None, None, metric, split, tolerance, confidence, None, None, None,
                              None, int(ev["n_seeds"].max()), ev, reason, folds=folds,
                              **context)  # fmt: skip
    top = ok[ok["level"] == ok["level"].max()]
    best = top.loc[(sign * top["value"]).idxmax()]
    interval = (
        (best["drop_lo"], best["drop_hi"])
        if max_drop is not None
        else (best["value_lo"], best["value_hi"])
    )
    has_test = "test_value" in best and pd.notna(best["test_value"])
    test_iv = (best["test_drop_lo"], best["test_drop_hi"]) if has_test else None
    if int(best["n_seeds"]) < 2 and "rows" not in ev.columns:
        note = (note + " Single seed: the interval is a point, not a confidence statement.").strip()
    return Recommendation(
        float(best["level"]),
        {c: best[c] for c in config},
        metric,
        split,
        tolerance,
        confidence,
        (float(interval[0]), float(interval[1])),
        float(best["value"]),
        float(best["test_value"]) if has_test else None,
        tuple(float(x) for x in test_iv) if test_iv else None,  # type: ignore[arg-type]
        int(best["n_seeds"]),
        ev,
        note,
        float(best["requested"]),
        folds=folds,
        drop=float(best["drop"]) if max_drop is not None else None,
        **context,
    )
