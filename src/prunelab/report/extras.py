"""Typed inputs and outputs of :func:`prunelab.report.build_report`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prunelab.decide.units import Units


@dataclass(frozen=True, eq=False)
class ReportExtras:
    """Optional pieces computed elsewhere; every field may be left out.

    - ``knees``: {curve label: tipping-point level} (labels from ``frame.curve_labels``).
    - ``recommendation``: a mapping or object with ``level``, ``method``, ``interval`` (lo, hi),
      ``evidence`` (DataFrame, list of dicts, mapping or text) and any other scalar fields.
    - ``tolerances``: {metric: allowed drop from dense}, shaded on that metric's curve.
    - ``sensitivity``: tidy DataFrame with columns layer, level, value.
    - ``weights``: {layer: 1D array or binned ``WeightHistogram``} for histograms (e.g. the
      shipped model's weights); ``weights_title`` names whose they are.
    - ``forgotten_images`` (N, 1, H, W), ``forgotten_labels`` (N,), ``forgotten_preds`` (N,).
    - ``retained``: the retained-intelligence summary (``prunelab.decide.preservation``).
    - ``detection_images`` with ``detection_columns`` (per model, per image ``(boxes, scores,
      labels)``) and ``detection_titles``: a grid of detections, truth | dense | pruned.
    - ``samples``: sample outputs side by side (e.g. greedy generations: prompt, dense, each
      pruned curve at one level); ``samples_title`` says which level.
    - ``spec``: the sweep spec (JSON-able mapping) shown at the top; ``title``: page title.
    - ``units``: the run's metric directions and units (:class:`~prunelab.decide.units.Units`).
    - ``search``: the record of a ``levels = "auto"`` search (:mod:`prunelab.sweep.auto`).
    """

    knees: Mapping[str, float] | None = None
    recommendation: object | None = None
    tolerances: Mapping[str, float] | None = None
    sensitivity: pd.DataFrame | None = None
    sensitivity_label: str = "metric drop"
    weights: Mapping[str, object] | None = None
    weights_title: str = "non-zero weight values per layer"
    forgotten_images: np.ndarray | None = None
    forgotten_labels: np.ndarray | None = None
    forgotten_preds: np.ndarray | None = None
    class_names: Sequence[str] | None = None
    spec: Mapping[str, object] | None = None
    title: str | None = None
    original: dict[str, float] | None = None  # the model as given (no fine-tune)
    retained: pd.DataFrame | None = None  # retained-intelligence summary, one row per level
    detection_images: np.ndarray | None = None  # (N, C, H, W) in [0, 1]
    detection_columns: Sequence[Sequence[tuple]] | None = None  # per model: per image detections
    detection_titles: Sequence[str] | None = None
    samples: pd.DataFrame | None = None  # the task's sample outputs, dense vs pruned, by column
    samples_title: str = ""
    units: Units | None = None
    search: Mapping[str, object] | None = None  # what levels = "auto" tried, why, where it stopped


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build_report` wrote things; ``plots`` maps a figure name to its PNG."""

    html: Path
    summary: Path
    plots: Mapping[str, Path] = field(default_factory=dict)
