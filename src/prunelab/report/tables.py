"""Tables derived from the results (pure DataFrame -> DataFrame): shared by Markdown and HTML."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from prunelab.report.frame import (
    CURVE_KEYS,
    DENSE,
    require_columns,
    with_labels,
)

SUMMARY_METRICS = ("accuracy", "agreement", "sparsity")  # a classification run's columns
_SPEED = (
    ("macs", "MAC speedup"),
    ("sparse_macs", "sparse-MAC speedup (theoretical)"),
    ("latency_b1_ms", "speedup b1"),
    ("latency_b256_ms", "speedup b256"),
    ("disk_bytes", "size ratio"),
    ("sparse_bytes", "sparse checkpoint size ratio"),
    ("compressed_bytes", "compressed size ratio"),
)


def summary_table(df: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Mean and std over seeds per (level, curve) for the ``metrics`` present, dense included.

    Columns: ``level, curve, seeds`` then ``<metric>_mean, <metric>_std`` for each metric.
    """
    require_columns(df, ("method", "level"))
    present = [m for m in metrics if m in df.columns]
    g = with_labels(df).groupby(["level", "curve"])
    out = g.size().rename("seeds").to_frame()
    for m in present:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std().fillna(0.0)
    return out.reset_index().sort_values(["level", "curve"], ignore_index=True)


def best_per_level(
    df: pd.DataFrame, metric: str = "accuracy", higher_is_better: bool = True
) -> pd.DataFrame:
    """The curve with the best mean ``metric`` at each pruned level (columns level, curve, mean)."""
    require_columns(df, ("method", "level", metric))
    table = summary_table(df[df["method"] != DENSE], [metric])
    pick = table.groupby("level")[f"{metric}_mean"]
    idx = pick.idxmax() if higher_is_better else pick.idxmin()
    best = table.loc[idx.to_numpy(), ["level", "curve", f"{metric}_mean"]]
    return best.rename(columns={f"{metric}_mean": "mean"}).reset_index(drop=True)


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per (level, curve) means of size/cost columns and speedups vs the dense rows.

    ``MAC speedup`` = dense MACs / MACs (theoretical); ``speedup b1``/``b256`` = dense
    latency / latency (measured); ``size ratio`` = dense bytes / bytes on disk. Returns None
    when the run recorded none of ``macs``, ``latency_*``, ``disk_bytes``.
    """
    costs = [c for c, _ in _SPEED if c in df.columns and df[c].notna().any()]
    if not costs:
        return None
    cols = [c for c in ("sparsity", "nonzeros") if c in df.columns] + costs
    out = with_labels(df).groupby(["level", "curve"])[cols].mean()
    dense = df.loc[df["method"] == DENSE, costs].mean()
    for col, name in _SPEED:
        if col in costs and pd.notna(dense[col]):
            out[name] = dense[col] / out[col]
    return out.reset_index().sort_values(["level", "curve"], ignore_index=True)


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell, identity first then metrics, sorted; bulky JSON columns dropped."""
    rows = df.drop(columns=["layer_sparsity"], errors="ignore")
    first = [c for c in (*CURVE_KEYS, "level", "seed") if c in rows.columns]
    last = [c for c in ("model", "dataset", "cell_id") if c in rows.columns]
    rows = rows[first + [c for c in rows.columns if c not in first + last] + last]
    return rows.sort_values(first, ignore_index=True)
