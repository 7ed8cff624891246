"""Report: figures, a Markdown summary and one self-contained HTML page from a results table.

Reads the results table only (``prunelab.sweep.store.load_results(run_dir)``), never a model::

    from prunelab.report import build_report
    paths = build_report(run_dir, load_results(run_dir))   # run_dir/report.html, summary.md, plots/
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from prunelab.decide.analysis import default_units
from prunelab.errors import PrunelabError
from prunelab.report import plots
from prunelab.report.detections import plot_detection_grid
from prunelab.report.extras import ReportExtras, ReportPaths
from prunelab.report.frame import (
    curve_labels,
    metric_columns,
    pareto_cost_column,
    pareto_mask,
    require_columns,
)
from prunelab.report.html import render_html
from prunelab.report.summary import render_summary, write_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

__all__ = [
    "ReportExtras",
    "ReportPaths",
    "build_report",
    "curve_labels",
    "make_plots",
    "metric_columns",
    "pareto_mask",
    "reference_figures",
    "render_html",
    "render_summary",
]


def reference_figures(df: pd.DataFrame, extras: ReportExtras) -> Iterator[tuple[str, Figure]]:
    """The figures that show the original model (as given) and the dense control as reference
    lines: one curve per metric the run's units know (its direction decides the band), and
    the Pareto front of the primary metric. Yields (name, figure) one at a time."""
    tolerances = extras.tolerances or {}
    units = extras.units or default_units()
    original = extras.original or {}
    labels = set(curve_labels(df))
    knees = {k: v for k, v in (extras.knees or {}).items() if k in labels}
    if len(knees) < len(extras.knees or {}):
        log.warning(
            "tipping points for unknown curves ignored: %s",
            ", ".join(sorted(set(extras.knees) - labels)),
        )
    for m in metric_columns(df):
        if m in units.metrics and df.loc[df["method"] != "dense", m].notna().any():
            hib = units.higher_is_better(m)
            fig = plots.curve_figure(df, m, knees, tolerances.get(m), hib, original.get(m))
            yield f"curve_{m}", fig
    primary = units.primary
    if pareto_cost_column(df) and primary in df.columns and units.higher_is_better(primary):
        yield "pareto", plots.pareto_figure(df, primary, True, original.get(primary))


def make_plots(df: pd.DataFrame, plot_dir: Path, extras: ReportExtras) -> dict[str, Path]:
    """Write every figure the data and extras allow; returns {figure name: PNG path}."""

    figures = reference_figures(df, extras)
    out = {name: plots.save(fig, plot_dir / f"{name}.png") for name, fig in figures}
    if extras.sensitivity is not None and len(extras.sensitivity):
        out["sensitivity"] = plots.plot_sensitivity(
            extras.sensitivity, plot_dir / "sensitivity.png", extras.sensitivity_label
        )
    if extras.weights:
        out["weights"] = plots.plot_weight_histograms(
            extras.weights,  # type: ignore[arg-type]
            plot_dir / "weights.png",
            title=extras.weights_title,
        )
    if extras.forgotten_images is not None and extras.forgotten_labels is not None:
        out["forgotten"] = plots.plot_example_grid(
            extras.forgotten_images,
            extras.forgotten_labels,
            plot_dir / "forgotten.png",
            extras.forgotten_preds,
            extras.class_names,
        )
    if extras.detection_images is not None and extras.detection_columns:
        out["detections"] = plot_detection_grid(
            extras.detection_images,
            extras.detection_columns,
            extras.class_names or (),
            extras.detection_titles or (),
            plot_dir / "detections.png",
        )
    return out


def _summary_of(recommendation: object) -> str:
    """The recommendation's paragraph, when the report was given one as a mapping."""
    if isinstance(recommendation, Mapping):
        return str(recommendation.get("summary", ""))
    return ""


def build_report(
    run_dir: Path | str, df: pd.DataFrame, extras: ReportExtras | None = None
) -> ReportPaths:
    """Write ``plots/*.png``, ``summary.md`` and ``report.html`` into ``run_dir``.

    ``df`` is the results table (one row per finished cell); ``extras`` carries the optional
    pieces computed elsewhere (tipping points, recommendation, sensitivity, ...).
    """
    require_columns(df, ("method", "level"))
    if df.empty:
        raise PrunelabError("the results table is empty: no finished cells to report")
    if (df["method"] != "dense").sum() == 0:
        raise PrunelabError("the results table has only dense rows: nothing was pruned")
    extras = extras or ReportExtras()
    run_dir = Path(run_dir)
    for stale in (run_dir / "plots").glob("*.png"):  # figures of an earlier report
        stale.unlink()
    plots = make_plots(df, run_dir / "plots", extras)
    summary = write_summary(
        df,
        run_dir / "summary.md",
        title=extras.title or "prunelab summary",
        original=extras.original,
        units=extras.units or default_units(),
        search=extras.search,
        recommendation=_summary_of(extras.recommendation),
    )
    html = run_dir / "report.html"
    html.write_text(render_html(df, plots, extras), encoding="utf-8")
    log.info("report written to %s (%d figures)", html, len(plots))
    return ReportPaths(html=html, summary=summary, plots=plots)
