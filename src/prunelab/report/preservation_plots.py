"""Figures for the preservation metrics, from stored arrays only (never a model).

matplotlib is imported lazily. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prunelab.errors import PrunelabError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pie_grid(
    images: np.ndarray,
    labels: Sequence[int],
    dense_pred: Sequence[int],
    pruned_pred: Sequence[int],
    path: Path,
    class_names: Sequence[str] | None = None,
    columns: int = 8,
) -> Path:
    """A grid of forgotten examples: image, true label, dense and pruned modal predictions.

    ``images`` (P, C, H, W) or (P, H, W), any scale (each image is shown min-max scaled).
    """
    imgs = np.asarray(images, dtype=float)
    if imgs.ndim == 4:
        imgs = imgs.mean(1) if imgs.shape[1] != 3 else imgs.transpose(0, 2, 3, 1)  # (P, H, W[, 3])
    if imgs.shape[0] == 0:
        raise PrunelabError("no forgotten examples to plot")
    name = (lambda k: class_names[k]) if class_names else str
    rows = -(-imgs.shape[0] // columns)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= imgs.shape[0]:
            continue
        im = imgs[i]
        ax.imshow((im - im.min()) / max(im.max() - im.min(), 1e-12), cmap="gray")
        ax.set_title(
            f"y {name(labels[i])}\nd {name(dense_pred[i])} p {name(pruned_pred[i])}", fontsize=6
        )
    fig.suptitle(
        "Pruning-identified exemplars (y: label, d: dense modal, p: pruned modal)", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_reliability(
    bins: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path
) -> Path:
    """Reliability diagram: accuracy vs confidence per bin, one line per named model.

    ``bins[name] = (count, confidence, accuracy)`` as from
    :func:`prunelab.measure.metrics.calibration.reliability_bins`; empty bins are skipped.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="calibrated")
    for name, (count, conf, acc) in bins.items():
        keep = np.asarray(count) > 0
        ax.plot(np.asarray(conf)[keep], np.asarray(acc)[keep], marker="o", ms=3, label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_class_recall(
    recalls: Mapping[str, np.ndarray], path: Path, class_names: Sequence[str] | None = None
) -> Path:
    """Per-class recall (mean over seeds, with min-max whiskers) for each named level.

    ``recalls[name]`` is (S, K): per-seed per-class recall.
    """
    plt = _pyplot()
    names = list(recalls)
    k = np.asarray(recalls[names[0]]).shape[1]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * k), 3.2))
    for j, name in enumerate(names):
        r = np.asarray(recalls[name])  # (S, K)
        x = np.arange(k) + j * width
        m = r.mean(0)
        ax.bar(x, m, width, label=name, yerr=[m - r.min(0), r.max(0) - m], error_kw={"lw": 0.6})
    ax.set_xticks(
        np.arange(k) + 0.4 - width / 2,
        class_names or [str(i) for i in range(k)],
        rotation=45,
        fontsize=7,
    )
    ax.set(ylabel="recall", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
