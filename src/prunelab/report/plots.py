"""Report figures as PNG files. Matplotlib is imported lazily, through ``Figure`` objects only
(no pyplot, so no global figure state and no GUI backend).

Sparsity axis: x = -log10(1 - s), so each tick step is "10x fewer remaining weights" and
0.9 / 0.95 / 0.98 / 0.99 are spread out instead of crammed at the right edge; ticks are
labelled as percentages of weights removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from prunelab.decide.weightstats import WeightHistogram
from prunelab.errors import PrunelabError
from prunelab.report.frame import (
    DENSE,
    aggregate,
    curve_labels,
    dense_value,
    pareto_cost_column,
    pareto_mask,
    with_labels,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)
_TICKS = (0.0, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
DPI = 110


def sparsity_to_x(s: np.ndarray | float) -> np.ndarray:
    """Map sparsity to the plot axis, x = -log10(1 - s).

    >>> sparsity_to_x(np.array([0.0, 0.9, 0.99])).round(6).tolist()
    [0.0, 1.0, 2.0]
    """
    s = np.clip(np.asarray(s, dtype=float), 0.0, 1.0 - 1e-9)
    return 0.0 - np.log10(1.0 - s)  # 0.0 - ... avoids -0.0


def format_level(s: float) -> str:
    """A sparsity as a short percentage: ``format_level(0.995) == '99.5%'``."""
    return f"{100 * s:.4g}%"


def _figure(width: float = 7.0, height: float = 4.2) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def save(fig: Figure, out: Path | str) -> Path:
    """Write ``fig`` to ``out`` as PNG (folders made as needed); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _colors(df: pd.DataFrame) -> dict[str, tuple]:
    """One colour per pruned curve of the whole table, so a method keeps its colour across
    figures even where some metric is missing for it."""
    from matplotlib import colormaps

    labels = sorted(set(curve_labels(df)) - {DENSE})
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _legend(fig: Figure, ax: Axes) -> None:
    """Legend under the axes, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    ncols = 3 if max(map(len, labels), default=0) <= 24 else 2
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(ncols, len(labels)),
        fontsize=8,
        frameon=False,
    )


def _sparsity_axis(ax: Axes, levels: np.ndarray) -> None:
    lo, hi = (float(np.min(levels)), float(np.max(levels))) if len(levels) else (0.5, 0.9)
    ticks = [t for t in _TICKS if lo - 1e-9 <= t <= hi + 1e-9] or [lo, hi]
    ax.set_xticks(sparsity_to_x(np.array(ticks)), [format_level(t) for t in ticks])
    x_lo, x_hi = sparsity_to_x(np.array([lo, hi]))
    pad = 0.06 * max(x_hi - x_lo, 0.3)
    ax.set_xlim(x_lo - pad, x_hi + pad)
    ax.set_xlabel("sparsity (weights removed; log scale of weights kept)")
    ax.grid(True, alpha=0.3)


def _references(
    ax: Axes, dense: float | None, original: float | None, tolerance: float | None, hib: bool
) -> None:
    """The original model (as given) and the dense control as two labelled lines; the
    tolerance band on the worse side of the dense control."""
    if original is not None and np.isfinite(original):
        ax.axhline(
            original, color="0.35", linestyle=":", linewidth=1.4, label=f"original {original:.4g}"
        )
    if dense is None:
        return
    ax.axhline(
        dense, color="black", linestyle="--", linewidth=1.2, label=f"dense control {dense:.4g}"
    )
    if tolerance is not None:
        sign = "−" if hib else "+"
        edge = dense - tolerance if hib else dense + tolerance
        ax.axhspan(
            min(dense, edge),
            max(dense, edge),
            color="0.6",
            alpha=0.25,
            label=f"tolerance: dense {sign} {tolerance:g}",
        )


def _mark_knee(ax: Axes, x: np.ndarray, y: np.ndarray, knee: float, color: tuple) -> None:
    kx = float(sparsity_to_x(knee))
    ky = float(np.interp(kx, x, y))
    ax.plot(
        [kx],
        [ky],
        marker="*",
        markersize=16,
        color=color,
        markeredgecolor="black",
        zorder=5,
        linestyle="none",
    )
    ax.annotate(
        format_level(knee),
        (kx, ky),
        textcoords="offset points",
        xytext=(6, 8),
        fontsize=8,
        color="black",
    )


def curve_figure(
    df: pd.DataFrame,
    metric: str,
    knees: Mapping[str, float] | None = None,
    tolerance: float | None = None,
    higher_is_better: bool = True,
    original: float | None = None,
) -> Figure:
    """``metric`` vs sparsity, one line per curve (mean over seeds, min–max band).

    ``knees`` maps a curve label (see :func:`prunelab.report.frame.curve_labels`) to its
    tipping-point level, drawn as a star; the original model (as given) and the dense control
    are reference lines; ``tolerance`` shades the allowed drop on the worse side of the dense
    control (below it when higher is better, above it otherwise).
    """
    agg = aggregate(df, metric)
    if agg.empty:
        raise PrunelabError(f"no pruned rows with metric '{metric}' to plot")
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors(df)
    unknown = set(knees or {}) - set(colors)
    if unknown:
        log.warning("tipping points for unknown curves ignored: %s", ", ".join(sorted(unknown)))
    for curve, g in agg.groupby("curve", sort=True):
        x = sparsity_to_x(g["level"].to_numpy())
        ax.plot(x, g["mean"], marker="o", markersize=4, color=colors[curve], label=curve)
        ax.fill_between(x, g["min"], g["max"], color=colors[curve], alpha=0.18, linewidth=0)
        if knees and curve in knees and knees[curve] is not None:
            _mark_knee(ax, x, g["mean"].to_numpy(), float(knees[curve]), colors[curve])
    _references(ax, dense_value(df, metric), original, tolerance, higher_is_better)
    _sparsity_axis(ax, agg["level"].to_numpy())
    arrow = "higher is better" if higher_is_better else "lower is better"
    ax.set_ylabel(f"{metric} ({arrow})")
    ax.set_title(f"{metric} vs sparsity — mean over seeds, band = min–max", fontsize=10)
    _legend(fig, ax)
    return fig


def plot_metric_curves(
    df: pd.DataFrame,
    metric: str,
    out: Path | str,
    knees: Mapping[str, float] | None = None,
    tolerance: float | None = None,
    higher_is_better: bool = True,
    original: float | None = None,
) -> Path:
    """:func:`curve_figure` written to ``out`` (PNG); returns the path."""
    return save(curve_figure(df, metric, knees, tolerance, higher_is_better, original), out)


def plot_pareto(
    df: pd.DataFrame,
    out: Path | str,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    original: float | None = None,
) -> Path:
    """:func:`pareto_figure` written to ``out`` (PNG); returns the path."""
    return save(pareto_figure(df, metric, higher_is_better, original), out)


def pareto_figure(
    df: pd.DataFrame,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    original: float | None = None,
) -> Figure:
    """Scatter every cell as (cost, ``metric``) and connect the Pareto-optimal ones; the
    original model (as given) and the dense control are reference lines, as on the curves.

    Cost is ``macs`` when present, else ``nonzeros`` (log axis).
    """
    cost_col = pareto_cost_column(df)
    if cost_col is None or metric not in df.columns:
        raise PrunelabError(f"pareto plot needs 'nonzeros' or 'macs' and '{metric}' columns")
    rows = with_labels(df).dropna(subset=[cost_col, metric])
    if not higher_is_better:
        raise PrunelabError(f"pareto plot expects a higher-is-better metric, got '{metric}'")
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors(df)
    for curve, g in rows.groupby("curve", sort=True):
        color = "black" if curve == DENSE else colors[curve]
        ax.scatter(g[cost_col], g[metric], s=22, color=color, alpha=0.75, label=curve)
    best = rows[pareto_mask(rows[cost_col].to_numpy(), rows[metric].to_numpy())]
    best = best.sort_values(cost_col)
    ax.plot(
        best[cost_col],
        best[metric],
        color="crimson",
        linewidth=1.5,
        drawstyle="steps-post",
        zorder=4,
        label="Pareto front",
    )
    ax.scatter(
        best[cost_col], best[metric], s=60, facecolors="none", edgecolors="crimson", zorder=5
    )
    _references(ax, dense_value(df, metric), original, None, higher_is_better)
    ax.set_xscale("log")
    ax.set_xlabel(f"{cost_col} (log scale; fewer is cheaper)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {cost_col} — every cell; Pareto-optimal cells circled", fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    _legend(fig, ax)
    return fig


def plot_sensitivity(sens: pd.DataFrame, out: Path | str, value_name: str = "value") -> Path:
    """Heatmap of a tidy (layer, level, value) table: rows = layers, columns = levels."""
    missing = {"layer", "level", "value"} - set(sens.columns)
    if missing:
        raise PrunelabError(f"sensitivity table lacks column(s) {', '.join(sorted(missing))}")
    grid = sens.pivot_table(
        index="layer", columns="level", values="value", aggfunc="mean", sort=False
    )  # (layers, levels)
    fig = _figure(7.0, max(2.4, 0.45 * len(grid) + 1.4))
    ax = fig.add_subplot()
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [format_level(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    if grid.size <= 150:
        mid = np.nanmean(grid.to_numpy())
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(
                j,
                i,
                f"{v:.3g}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < mid else "black",
            )
    ax.set_xlabel("layer sparsity")
    ax.set_title(f"layer sensitivity — {value_name}", fontsize=10)
    fig.colorbar(im, ax=ax, label=value_name)
    return save(fig, out)


def plot_weight_histograms(
    weights: Mapping[str, np.ndarray | WeightHistogram],
    out: Path | str,
    bins: int = 60,
    max_layers: int = 12,
    title: str = "non-zero weight values per layer",
) -> Path:
    """One histogram per layer of its non-zero weights; titles give the fraction of zeros.

    A layer is its raw weights, or a :class:`~prunelab.decide.weightstats.WeightHistogram`
    already binned (what a sweep stores).
    """
    if not weights:
        raise PrunelabError("no weights given for histograms")
    names = list(weights)[:max_layers]
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = _figure(3.2 * ncols, 2.4 * nrows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        h = weights[name]
        if isinstance(h, WeightHistogram):
            ax.stairs(h.counts, h.edges, fill=True, color="steelblue")
            zero = h.zeros / max(h.zeros + int(h.counts.sum()), 1)
        else:
            w = np.asarray(h, dtype=float).ravel()
            nz = w[w != 0]
            ax.hist(nz, bins=bins, color="steelblue")
            zero = 1 - len(nz) / max(len(w), 1)
        ax.set_title(f"{name}  ({zero:.1%} zero)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=5)
    fig.suptitle(title, fontsize=10)
    return save(fig, out)


def plot_example_grid(
    images: np.ndarray,
    labels: np.ndarray,
    out: Path | str,
    preds: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    max_examples: int = 40,
    ncols: int = 10,
) -> Path:
    """Grid of grayscale examples (N, 1, H, W) or (N, H, W), titled with label (and prediction)."""
    images = np.asarray(images, dtype=float)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise PrunelabError(f"examples need (N,1,H,W) images with N labels, got {images.shape}")
    n = min(len(images), max_examples)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = _figure(1.15 * ncols, 1.3 * nrows + 0.4)

    def name(k: int) -> str:
        return str(class_names[k]) if class_names is not None else str(k)

    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(images[i], cmap="gray_r")
        title = name(int(labels[i])) + ("" if preds is None else f"→{name(int(preds[i]))}")
        ax.set_title(title, fontsize=7, color="black" if preds is None else "firebrick")
        ax.set_axis_off()
    fig.suptitle(
        "label → pruned model's prediction" if preds is not None else "examples", fontsize=9
    )
    return save(fig, out)
