"""Pure helpers over the sweep results table (one row per cell): labels, metrics, aggregates.

Everything here takes and returns pandas/numpy data; no plotting, no files. The table's
schema is the one ``prunelab.sweep.store.load_results`` returns (identity columns, one column per
metric, ``val_``/``oneshot_``/``train_`` prefixed variants).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prunelab.errors import PrunelabError

#: Columns that identify a curve (a "method" in the report's sense), in label order.
CURVE_KEYS = ("method", "allocation", "structure", "schedule", "ft_epochs")
#: Columns that are neither identity nor a test metric curve.
NOT_METRICS = frozenset(
    {
        "cell_id",
        "model",
        "dataset",
        "method",
        "allocation",
        "structure",
        "schedule",
        "level",
        "seed",
        "ft_epochs",
        "layer_sparsity",
        "duration_s",
        "prune_s",
        "peak_rss_mib",
        "achieved_level",  # the level reached (prunelab.decide.levels), not a quality
        "requested",  # the level asked for, when ``level`` is the credited one
        "latency_threads",
    }
)
#: Size/cost columns: shown in the efficiency table and Pareto plot, not as curves.
EFFICIENCY = (
    "sparsity",
    "model_sparsity",
    "removed",
    "nonzeros",
    "params",
    "macs",
    "sparse_macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "dense_latency_b1_ms",
    "dense_latency_b256_ms",
    "speedup_b1",
    "fps_b1",
    "disk_bytes",
    "sparse_bytes",
    "compressed_bytes",
)
#: Curves are drawn first for these, then for any other metric column alphabetically.
PREFERRED = ("accuracy", "agreement", "kl", "macro_f1", "loss")
_PREFIXES = ("val_", "oneshot_", "train_")
DENSE = "dense"


def require_columns(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise a one-line :class:`PrunelabError` if ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PrunelabError(f"results table lacks column(s) {', '.join(missing)}")


def curve_labels(df: pd.DataFrame) -> pd.Series:
    """One label per row naming its curve; identity parts constant over pruned rows are dropped.

    Dense rows are labelled ``"dense"``. Use this same function to key knee dicts.

    >>> df = pd.DataFrame({"method": ["dense", "magnitude", "wanda"],
    ...                    "allocation": ["global"] * 3, "level": [0.0, 0.5, 0.5]})
    >>> list(curve_labels(df))
    ['dense', 'magnitude', 'wanda']
    """
    require_columns(df, ("method",))
    pruned = df[df["method"] != DENSE]
    keys = [k for k in CURVE_KEYS if k in df.columns and pruned[k].nunique() > 1]
    keys = keys or ["method"]

    def label(row: pd.Series) -> str:
        if row["method"] == DENSE:
            return DENSE
        parts = [f"ft={row[k]:g}" if k == "ft_epochs" else str(row[k]) for k in keys]
        return " · ".join(parts)

    return df.apply(label, axis=1).astype(str) if len(df) else pd.Series([], dtype=str)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Test-split quality metrics present in ``df`` (curves are drawn for these), in order.

    >>> metric_columns(pd.DataFrame({"level": [0.5], "kl": [0.1], "accuracy": [0.9],
    ...                              "ece": [0.02], "val_accuracy": [0.9], "nonzeros": [3]}))
    ['accuracy', 'kl', 'ece']
    """
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    found = [
        c
        for c in numeric
        if c not in NOT_METRICS and c not in EFFICIENCY and not c.startswith(_PREFIXES)
    ]
    first = [c for c in PREFERRED if c in found]
    return first + sorted(c for c in found if c not in first)


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with a ``curve`` column from :func:`curve_labels`."""
    return df.assign(curve=curve_labels(df))


def aggregate(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (curve, level) statistics of ``metric`` over seeds, dense rows excluded.

    Returns columns ``curve, level, mean, std, min, max, n`` sorted by curve then level;
    ``std`` is the sample std (ddof=1), 0 when one seed.
    """
    require_columns(df, ("method", "level", metric))
    rows = with_labels(df)
    rows = rows[(rows["method"] != DENSE) & rows[metric].notna()]
    g = rows.groupby(["curve", "level"])[metric]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out.rename(columns={"count": "n"}).sort_values(["curve", "level"], ignore_index=True)


def dense_value(df: pd.DataFrame, metric: str) -> float | None:
    """Mean of ``metric`` over the dense control rows, or None without dense rows."""
    dense = df.loc[df["method"] == DENSE, metric] if metric in df.columns else pd.Series([])
    dense = dense.dropna()
    return float(dense.mean()) if len(dense) else None


def pareto_mask(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Boolean mask of Pareto-optimal points: lower cost and higher value are better.

    A point is dominated when another has cost <= and value >= with one of them strict.
    Duplicate optimal points are all kept.

    >>> pareto_mask(np.array([1, 2, 3, 2]), np.array([0.5, 0.9, 0.95, 0.6])).tolist()
    [True, True, True, False]
    """
    cost, value = np.asarray(cost, float), np.asarray(value, float)
    if cost.shape != value.shape or cost.ndim != 1:
        raise PrunelabError(f"pareto needs two equal 1D arrays, got {cost.shape}, {value.shape}")
    no_worse = (cost[None, :] <= cost[:, None]) & (value[None, :] >= value[:, None])  # (i, j)
    better = (cost[None, :] < cost[:, None]) | (value[None, :] > value[:, None])
    return ~np.any(no_worse & better, axis=1)


def pareto_cost_column(df: pd.DataFrame) -> str | None:
    """The cost axis for the Pareto plot: ``macs`` when present, else ``nonzeros``."""
    for col in ("macs", "nonzeros"):
        if col in df.columns and df[col].notna().any():
            return col
    return None
