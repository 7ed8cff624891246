"""Report a sweep's run directory: results, tipping points, recommendation, stored analyses.

Everything comes from the store (results table and meta records), never from a model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from prunelab.analysis import CONFIG_COLUMNS, Recommendation, points, recommend, tipping_points
from prunelab.errors import PrunelabError
from prunelab.report.extras import ReportExtras, ReportPaths
from prunelab.report.frame import curve_labels
from prunelab.store import Store, load_results

log = logging.getLogger(__name__)


def knees_by_label(df: pd.DataFrame, metric: str = "accuracy", split: str = "val"
                   ) -> dict[str, float]:
    """{curve label (as the plots name curves): knee level} for curves that have a knee."""
    tp = tipping_points(df, metric, split)
    labels = curve_labels(df)
    cols = [c for c in CONFIG_COLUMNS if c in df.columns and c in tp.columns]
    out = {}
    for _, row in tp.dropna(subset=["knee"]).iterrows():
        match = np.logical_and.reduce([df[c] == row[c] for c in cols])
        if match.any():
            out[labels[match].iloc[0]] = float(row["knee"])
    return out


def run_recommendation(df: pd.DataFrame, metric: str = "accuracy",
                       max_drop_points: float | None = 0.5,
                       min_value: float | None = None) -> Recommendation:
    """:func:`prunelab.analysis.recommend` with the CLI's units (points of a 0-1 metric)."""
    max_drop = None if max_drop_points is None else points(max_drop_points)
    return recommend(df, metric, max_drop=max_drop, min_value=min_value)


def sensitivity_frame(store: Store) -> pd.DataFrame | None:
    """The first stored sensitivity table as the report's tidy (layer, level, value) frame."""
    keys = store.meta_keys("sensitivity/")
    if not keys:
        return None
    table = pd.DataFrame(store.get_meta(keys[0]))
    return table.rename(columns={"drop": "value"})[["layer", "level", "value"]]


def report_run(run_dir: Path | str, metric: str = "accuracy",
               max_drop_points: float | None = 0.5) -> tuple[ReportPaths, Recommendation | None]:
    """Write plots, summary.md and report.html for ``run_dir``; return them and the advice."""
    from prunelab.report import build_report

    run_dir = Path(run_dir)
    df = load_results(run_dir)
    with Store(run_dir, create=False) as store:
        spec = json.loads(json.dumps(store.get_meta("spec")))
        sens = sensitivity_frame(store)
    rec, knees = None, {}
    try:
        knees = knees_by_label(df, metric)
        rec = run_recommendation(df, metric, max_drop_points)
    except PrunelabError as e:  # e.g. a partial run without dense rows yet
        log.warning("no recommendation: %s", e)
    tolerance = {metric: points(max_drop_points)} if max_drop_points is not None else None
    extras = ReportExtras(knees=knees, recommendation=rec, tolerances=tolerance,
                          sensitivity=sens, spec=spec,
                          title=f"prunelab report: {spec.get('model')} on "
                                f"{spec.get('data', {}).get('name')}")
    return build_report(run_dir, df, extras), rec
