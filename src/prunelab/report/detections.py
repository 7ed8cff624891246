"""Detections drawn side by side: one row per image, one column per model (dense, pruned...).

Reads only arrays (as a detection cell stores them, see
:func:`prunelab.measure.detection.detection_artifacts`), never a model. Matplotlib is imported
lazily, through ``Figure`` objects only (no pyplot state, Agg canvas).

Store layout a detection sweep writes for this figure (the first ``n`` = 6 test images):

- every detection cell: ``det_boxes/<i>`` float32 (K_i, 4) xyxy pixels, ``det_scores/<i>``
  float32 (K_i,), ``det_labels/<i>`` int64 (K_i,), for ``i`` in ``0..n-1``;
- the run (``prunelab.sweep.store.RUN_ID``): ``det_images`` float32 (n, C, H, W) in [0, 1] and
  the ground truth as ``det_truth_boxes/<i>``, ``det_truth_scores/<i>``, ``det_truth_labels/<i>``.

:func:`stored_detections` reads one cell's (or the run's) back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunelab.errors import PrunelabError
from prunelab.measure.detection import detections_from_artifacts
from prunelab.sweep.store import Store

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PANEL_PX = 220  # each image panel is PANEL_PX x PANEL_PX pixels in the PNG
DPI = 110
ImageDetections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4), scores, labels


def stored_detections(store: Store, cell_id: str, prefix: str = "det") -> list[ImageDetections]:
    """A cell's stored detections (``prefix`` "det"), or the run's truth ("det_truth")."""
    names = store.artifact_names(cell_id, prefix + "_")
    return detections_from_artifacts({n: store.artifact(cell_id, n) for n in names}, prefix)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) with C in (1, 3) -> (H, W) grey or (H, W, 3) RGB, clipped to [0, 1]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise PrunelabError(f"images must be (N, 1 or 3, H, W); got an image {image.shape}")
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # (H, W[, 3])


def _draw(ax: Axes, image: np.ndarray, det: ImageDetections, names, threshold: float) -> None:
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    ax.imshow(_as_hwc(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    colors = colormaps["tab10"]
    boxes, scores, labels = det
    for (x1, y1, x2, y2), s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if s < threshold:
            continue
        color = colors(int(k) % 10)
        # pixel-edge boxes: pixel c spans [c - 0.5, c + 0.5] in imshow's coordinates
        ax.add_patch(
            Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=color)
        )
        name = names[int(k)] if 0 <= int(k) < len(names) else str(k)
        ax.text(x1 - 0.5, y1 - 0.5, f"{name} {s:.2f}", color="white", fontsize=6,
                va="bottom", bbox={"fc": color, "ec": "none", "pad": 0.5})  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def plot_detection_grid(
    images: np.ndarray,
    columns: Sequence[Sequence[ImageDetections]],
    class_names: Sequence[str],
    titles: Sequence[str],
    path: Path | str,
    score_threshold: float = 0.3,
) -> Path:
    """Draw ``columns[j][i]`` (boxes, scores, labels) of model ``j`` on image ``i``; save a PNG.

    ``images`` is (N, C, H, W) in [0, 1] (numpy or torch); each column holds N per-image
    triples (e.g. from :func:`stored_detections`) and ``titles[j]`` names it. Boxes scoring
    below ``score_threshold`` are not drawn. The PNG is ``PANEL_PX`` pixels per panel, N rows
    by ``len(columns)`` columns.

    >>> import tempfile
    >>> img = np.zeros((1, 1, 8, 8), np.float32)
    >>> det = (np.array([[1., 1., 5., 5.]], np.float32), np.array([0.9], np.float32), np.array([0]))
    >>> out = Path(tempfile.mkdtemp()) / "grid.png"
    >>> plot_detection_grid(img, [[det]], ["shirt"], ["dense"], out).stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure

    images = np.asarray(images)
    n, cols = images.shape[0], len(columns)
    if cols == 0 or len(titles) != cols:
        raise PrunelabError(f"need one title per column: {len(titles)} titles, {cols} columns")
    if any(len(c) != n for c in columns):
        raise PrunelabError(f"every column needs {n} images' detections (one per image)")
    side = PANEL_PX / DPI
    fig = Figure(figsize=(side * cols, side * n), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for j, (col, title) in enumerate(zip(columns, titles)):
        axes[0, j].set_title(title, fontsize=8)
        for i in range(n):
            _draw(axes[i, j], images[i], col[i], class_names, score_threshold)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
