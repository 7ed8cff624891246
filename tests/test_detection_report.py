"""Detection report pieces: store artefacts round-trip exactly; the grid PNG shows the boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.measure.detection import detection_artifacts, detections_from_artifacts
from prunelab.report.detections import PANEL_PX, plot_detection_grid, stored_detections
from prunelab.sources.models.boxes import Detections
from prunelab.sweep.store import RUN_ID, Store

pytest.importorskip("matplotlib")


def _preds(n: int, g: torch.Generator) -> list[Detections]:
    out = []
    for i in range(n):
        k = i % 3  # 0, 1, 2 detections: the empty image must round-trip too
        xy = torch.rand(k, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 1 + torch.rand(k, 2, generator=g) * 20], 1)  # (k, 4)
        out.append(Detections(boxes, torch.rand(k, generator=g), torch.randint(0, 10, (k,))))
    return out


def test_artifacts_round_trip_exactly_through_the_store(tmp_path):
    preds = _preds(8, torch.Generator().manual_seed(0))
    arts = detection_artifacts(preds, n=6)
    assert len(arts) == 18  # 6 images x (boxes, scores, labels); images 6 and 7 left out
    with Store(tmp_path) as store:
        store.put_cell("c1", {}, {"map50": 0.5}, 1.0, artifacts=arts)
        store.put_artifact("c1", "test_preds", np.zeros(3))  # other artefacts are ignored
        back = stored_detections(store, "c1")
    assert len(back) == 6
    for (boxes, scores, labels), p in zip(back, preds, strict=False):
        assert boxes.shape == (len(p), 4) and boxes.dtype == np.float32
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(boxes, p.boxes.numpy())
        np.testing.assert_array_equal(scores, p.scores.numpy())
        np.testing.assert_array_equal(labels, p.labels.numpy())


def test_truth_and_predictions_share_a_store_by_prefix(tmp_path):
    g = torch.Generator().manual_seed(1)
    truth, preds = _preds(3, g), _preds(3, g)
    with Store(tmp_path) as store:
        for name, arr in detection_artifacts(truth, prefix="det_truth").items():
            store.put_artifact(RUN_ID, name, arr)
        store.put_cell("c1", {}, {}, 1.0, artifacts=detection_artifacts(preds))
        got_truth = stored_detections(store, RUN_ID, "det_truth")
        got_preds = stored_detections(store, "c1")
    np.testing.assert_array_equal(got_truth[2][0], truth[2].boxes.numpy())
    np.testing.assert_array_equal(got_preds[2][0], preds[2].boxes.numpy())


def test_missing_image_is_an_error():
    arts = detection_artifacts(_preds(3, torch.Generator().manual_seed(0)))
    del arts["det_scores/1"]
    with pytest.raises(PrunelabError, match="det_scores/1"):
        detections_from_artifacts(arts)
    arts = {k: v for k, v in arts.items() if not k.endswith("/1")}
    with pytest.raises(PrunelabError, match="skip images"):
        detections_from_artifacts(arts)


def _colored(png: np.ndarray) -> np.ndarray:
    """Pixels whose channels differ: box colours (the images and text backgrounds are grey)."""
    rgb = png[..., :3]
    return (rgb.max(-1) - rgb.min(-1)) > 0.2  # (H, W)


def test_grid_has_the_panel_size_and_draws_boxes_only_where_given(tmp_path):
    from matplotlib.image import imread

    images = np.zeros((2, 1, 64, 64), np.float32)
    images[:, :, 20:40, 20:40] = 0.8  # a grey object
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    box = (np.array([[20, 20, 40, 40]], np.float32), np.array([0.9], np.float32), np.array([3]))
    low = (box[0], np.array([0.1], np.float32), box[2])  # below the score threshold
    columns = [[empty, low], [box, empty]]  # dense: nothing drawn; pruned: a box on image 0
    path = plot_detection_grid(images, columns, [str(c) for c in range(10)], ["a", "b"],
                               tmp_path / "sub" / "grid.png")  # fmt: skip
    png = imread(path)
    assert png.shape[:2] == (2 * PANEL_PX, 2 * PANEL_PX)
    hit = _colored(png)
    ys, xs = np.nonzero(hit)
    assert hit.sum() > 50, "the box is drawn"
    assert xs.min() >= PANEL_PX and ys.max() < PANEL_PX, "only in column 1, row 0"
    # the drawn box frames the object: its colour spans about the object's third of the panel
    width = (xs.max() - xs.min()) / PANEL_PX
    assert 0.2 < width < 0.5


def test_grid_checks_its_inputs(tmp_path):
    images = np.zeros((2, 1, 8, 8), np.float32)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    with pytest.raises(PrunelabError, match="one title per column"):
        plot_detection_grid(images, [[empty, empty]], ["x"], [], tmp_path / "g.png")
    with pytest.raises(PrunelabError, match="one per image"):
        plot_detection_grid(images, [[empty]], ["x"], ["a"], tmp_path / "g.png")
    with pytest.raises(PrunelabError, match="images must be"):
        plot_detection_grid(np.zeros((1, 2, 8, 8)), [[empty]], ["x"], ["a"], tmp_path / "g.png")
