"""Stopping a searched cell early on a slice of validation (decide/sequential.py): the slices,
the records cut to them, the interval over mixed slices, and the error rate of the rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.decide.interval import Pair, paired_draws
from prunelab.decide.sequential import EarlyStop
from prunelab.decide.verdict import judge
from prunelab.errors import PrunelabError
from prunelab.measure.detection_records import detection_records
from prunelab.measure.resampled import on_slice, slice_rows, take_records
from prunelab.sources.models.boxes import Detections
from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.detection import DetectionTask

ACC = ClassificationTask.statistic("accuracy")


def correct(rng: np.random.Generator, p: np.ndarray) -> dict[str, np.ndarray]:
    """Classification records whose rows are right with probabilities ``p``."""
    label = np.zeros(len(p), dtype=np.int64)
    pred = np.where(rng.random(len(p)) < p, 0, 1)
    return {"pred": pred, "label": label}


def test_slices_nest_spread_and_cover():
    n = 1000
    quarter, half = slice_rows(n, 250), slice_rows(n, 500)
    assert np.isin(quarter, half).all() and len(set(half)) == 500
    assert (np.diff(half) > 0).all()  # sorted: records keep the split's order
    assert quarter.min() < 100 and quarter.max() > 900  # spread, not the first rows
    assert (slice_rows(n, n) == np.arange(n)).all()
    with pytest.raises(ValueError):
        slice_rows(10, 11)


def test_records_cut_to_a_slice_match_records_measured_on_it():
    rng = np.random.default_rng(0)
    rec = correct(rng, np.full(400, 0.8))
    rows = slice_rows(400, 100)
    cut = on_slice(rec, 400, 100)
    assert (cut["pred"] == rec["pred"][rows]).all()
    assert on_slice(cut, 400, 100) is cut  # already on the slice
    half = on_slice(rec, 400, 200)
    assert all((on_slice(half, 400, 100)[k] == cut[k]).all() for k in cut)  # slices nest
    with pytest.raises(ValueError):
        on_slice(cut, 400, 200)


def test_detection_records_follow_their_images():
    truth = [Detections(torch.tensor([[0.0, 0, 10, 10]]), torch.ones(1), torch.tensor([i % 2]))
             for i in range(6)]  # fmt: skip
    dets = [Detections(torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]),
                       torch.tensor([0.9, 0.3 + i / 10]), torch.tensor([i % 2, 0]))
            for i in range(6)]  # fmt: skip
    rec = detection_records(dets, truth, num_classes=2, score_threshold=0.0)
    idx = np.array([1, 4])
    cut = take_records(rec, idx)
    again = detection_records([dets[i] for i in idx], [truth[i] for i in idx], 2, 0.0)
    assert sorted(cut) == sorted(again)
    for k in again:
        np.testing.assert_array_equal(np.sort(cut[k], axis=0), np.sort(again[k], axis=0))
    stat = DetectionTask.statistic("map50")
    w = np.ones((1, 2))
    assert stat(cut, w) == pytest.approx(stat(again, w))


def test_a_group_on_a_slice_leaves_the_full_groups_draws_unchanged():
    rng = np.random.default_rng(1)
    ref = correct(rng, np.full(300, 0.9))
    full = {"a": [Pair(0, -1, correct(rng, np.full(300, 0.85)), ref)]}
    alone = paired_draws(ACC, full, n_boot=300)["a"]
    sliced = Pair(0, -1, on_slice(correct(rng, np.full(300, 0.5)), 300, 75), on_slice(ref, 300, 75))
    mixed = paired_draws(ACC, {**full, "b": [sliced]}, n_boot=300)
    np.testing.assert_array_equal(mixed["a"].drops, alone.drops)
    assert mixed["b"].rows == 75 and mixed["b"].drop > 0.2
    bad = Pair(0, -1, sliced.cell, ref)  # a slice paired with every row: refused
    with pytest.raises(PrunelabError, match="same validation rows"):
        paired_draws(ACC, {"c": [bad]}, n_boot=10)


def test_early_stop_settings():
    stop = EarlyStop("accuracy", 0.01)
    assert stop.sizes(200) == [50, 100, 200] and stop.sizes(100) == [50, 100]
    assert stop.sizes(60) == [60]  # 15 and 30 rows: too few for an interim look
    assert EarlyStop.from_dict(None) is None
    assert EarlyStop.from_dict({"metric": "accuracy", "max_drop": 0.01, "looks": [0.25]}).looks == (
        0.25,
    )
    with pytest.raises(PrunelabError):
        EarlyStop("accuracy", 0.01, looks=(0.5, 0.25))
    rng = np.random.default_rng(2)
    ref = correct(rng, np.full(400, 0.9))
    same = {k: v.copy() for k, v in ref.items()}
    broken = correct(rng, np.full(400, 0.3))
    assert stop.verdict(ACC, 1.0, broken, ref) == "breaks"
    assert stop.verdict(ACC, 1.0, same, ref) == "undecided"  # holds never stops by default
    assert EarlyStop("accuracy", 0.01, holds=True).verdict(ACC, 1.0, same, ref) == "holds"


def sequential(stop: EarlyStop, cell: dict, ref: dict, n: int, confidence: float) -> str:
    """The search's verdict on one cell: interim looks (the cell's own rule), then the stated
    rule on whatever rows it measured."""
    for m in stop.sizes(n):
        c, r = on_slice(cell, n, m), on_slice(ref, n, m)
        if m < n and stop.verdict(ACC, 1.0, c, r) != "undecided":
            break
    d = paired_draws(ACC, {0: [Pair(0, -1, c, r)]}, n_boot=1000)[0]
    return judge(*d.bounds(confidence), stop.max_drop)


def boundary_rates(stop: EarlyStop, rounds: int = 200) -> tuple[int, int]:
    """Wrong "holds" of the sequential rule and of the one-look rule over ``rounds`` cells
    whose true drop is exactly the tolerance (400 validation rows, 5-point tolerance)."""
    n, tol = 400, stop.max_drop
    rng = np.random.default_rng(3)
    wrong_seq = wrong_one = 0
    for _ in range(rounds):
        ref = correct(rng, np.full(n, 0.9))
        cell = {"pred": ref["pred"].copy(), "label": ref["label"]}
        right = np.flatnonzero(cell["pred"] == 0)
        cell["pred"][right[rng.random(len(right)) < tol / 0.9]] = 1  # true drop: the tolerance
        wrong_seq += sequential(stop, cell, ref, n, 0.95) == "holds"
        d = paired_draws(ACC, {0: [Pair(0, -1, cell, ref)]}, n_boot=1000)[0]
        wrong_one += judge(*d.bounds(0.95), tol) == "holds"
    return wrong_seq, wrong_one


def test_futility_stops_keep_the_stated_error_rate():
    """Stopping only on "breaks" never ships more often than the one-look rule (and does stop
    cells: the cost it saves is real)."""
    stop = EarlyStop("accuracy", 0.05)
    wrong_seq, wrong_one = boundary_rates(stop)
    assert wrong_seq <= wrong_one
    rng = np.random.default_rng(4)
    ref = correct(rng, np.full(400, 0.9))
    assert stop.verdict(ACC, 1.0, on_slice(correct(rng, np.full(400, 0.5)), 400, 100),
                        on_slice(ref, 400, 100)) == "breaks"  # fmt: skip


def test_interim_holds_would_raise_the_error_rate():
    """Why "holds" does not stop a cell by default: even at 99.9 % per interim look, the slices'
    percentile bootstrap ships more often than the one-look rule at the boundary (the control
    that shows the test above can fail)."""
    wrong_seq, wrong_one = boundary_rates(EarlyStop("accuracy", 0.05, holds=True))
    assert wrong_seq - wrong_one >= 3, (wrong_seq, wrong_one)


def test_a_cell_scored_in_slices_equals_one_scored_at_once(tmp_path, monkeypatch):
    """A searched cell that never stops scores every validation row once, in slices, and its
    row and records are the ones it gets scored at once; a broken one stops on the first slice."""
    import dataclasses

    from prunelab.sweep.cell import run_cell
    from prunelab.sweep.context import Context
    from prunelab.sweep.plan import expand_cells
    from prunelab.sweep.spec import spec_from_dict
    from prunelab.tasks.base import RECORDS

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    spec = spec_from_dict({"model": "mlp-tiny", "data": {"name": "digits"}, "levels": [0.6],
                           "methods": ["magnitude"], "dense": {"epochs": 2},
                           "finetune": {"epochs": 0}, "sensitivity_scan": False})  # fmt: skip
    cell = next(c for c in expand_cells(spec) if c.method != "dense")
    ctx = Context.build(cell)
    n = len(ctx.data.val)
    plain = run_cell(cell, ctx)
    patient = run_cell(dataclasses.replace(cell, early_stop=EarlyStop("accuracy", 1.0)), ctx)
    assert patient.row["val_rows"] == n and patient.row["val_stop"] == ""
    val = [k for k in plain.row if k.startswith("val_")]
    assert val and all(patient.row[k] == pytest.approx(plain.row[k], rel=1e-6) for k in val)
    recs = [k for k in plain.artifacts if k.startswith(RECORDS)]  # batches differ: float noise
    assert recs and all(np.allclose(patient.artifacts[k], plain.artifacts[k]) for k in recs)
    assert patient.row["val_accuracy"] == plain.row["val_accuracy"]  # counts: exact
    stop = EarlyStop("accuracy", 0.0)
    broken = run_cell(dataclasses.replace(cell, level=0.98, early_stop=stop), ctx)
    assert broken.row["val_stop"] == "breaks" and broken.row["val_rows"] == stop.sizes(n)[0]
    assert len(broken.artifacts[recs[0]]) == stop.sizes(n)[0]


def test_outputs_of_parts_join_in_row_order():
    task = ClassificationTask()
    idx = np.array([4, 0, 2, 1, 3])
    parts = [torch.tensor([[4.0], [0.0]]), torch.tensor([[2.0], [1.0], [3.0]])]
    assert task.join_outputs(parts, idx).flatten().tolist() == [0, 1, 2, 3, 4]
    assert task.join_outputs([["e", "a"], ["c", "b", "d"]], idx) == list("abcde")
    with pytest.raises(PrunelabError, match="cannot join"):
        task.join_outputs([{"a": 1}], np.array([0]))
