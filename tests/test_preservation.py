"""Preservation metrics against hand-computed values on tiny inputs, and on a tiny real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from prunelab import PrunelabError, TrainConfig, build_model, load_dataset, prune, train
from prunelab.decide.preservation import LevelRecords, retained_summary
from prunelab.measure.corruptions import CORRUPTIONS, corrupt
from prunelab.measure.metrics import METRICS, evaluate, predict
from prunelab.measure.metrics.base import Evaluation
from prunelab.measure.metrics.calibration import (
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from prunelab.measure.metrics.classwise import class_shifts, per_class_recall, welch_t_test
from prunelab.measure.metrics.forgetting import modal_labels, modal_sets, pies
from prunelab.measure.metrics.robustness import (
    RobustnessSuite,
    reference_context,
    robustness_profile,
)

# ---------------------------------------------------------------- calibration

# Five examples, five equal-width bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
#   conf .90 hit, .90 miss -> bin 4: acc .5, conf .9 -> |gap| .40, weight 2/5
#   conf .70 hit           -> bin 3: |1 - .7| = .30, weight 1/5
#   conf .45 hit           -> bin 2: |1 - .45| = .55, weight 1/5
#   conf .35 miss          -> bin 1: |0 - .35| = .35, weight 1/5
# ECE = (2 * .40 + .30 + .55 + .35) / 5 = 0.40
PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05, 0.00],
        [0.90, 0.10, 0.00, 0.00],
        [0.70, 0.30, 0.00, 0.00],
        [0.30, 0.25, 0.45, 0.00],
        [0.35, 0.33, 0.32, 0.00],
    ]
)
LABELS = torch.tensor([0, 1, 0, 2, 1])


def test_ece_on_a_known_histogram():
    count, conf, acc = reliability_bins(PROBS, LABELS, n_bins=5)
    assert count.tolist() == [0, 1, 1, 1, 2]
    assert conf.tolist() == pytest.approx([0, 0.35, 0.45, 0.70, 0.90])
    assert acc.tolist() == pytest.approx([0, 0, 1, 1, 0.5])
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.40)


def test_ece_bins_are_right_closed_and_one_bin_is_accuracy_minus_confidence():
    p = torch.tensor([[0.5, 0.5], [0.75, 0.25]])  # 0.5 belongs to (0, .5], 0.75 to (.5, 1]
    count, _, _ = reliability_bins(p, torch.tensor([0, 0]), n_bins=2)
    assert count.tolist() == [1, 1]
    # a single bin: |mean accuracy - mean confidence| = |3/5 - mean conf|
    mean_conf = float(PROBS.max(1).values.double().mean())
    assert expected_calibration_error(PROBS, LABELS, n_bins=1) == pytest.approx(
        abs(0.6 - mean_conf)
    )


def test_ece_metric_through_evaluate_uses_fifteen_bins():
    logits = PROBS.clamp(min=1e-12).log()
    ev = Evaluation(logits, LABELS, torch.nn.Identity())
    want = expected_calibration_error(torch.softmax(logits.double(), 1), LABELS, n_bins=15)
    assert METRICS.get("ece")(ev) == pytest.approx(want)
    ev_ref = Evaluation(logits, LABELS, torch.nn.Identity(), reference=logits)
    assert METRICS.get("delta_ece")(ev_ref) == pytest.approx(0.0)


def test_brier_and_nll_by_hand():
    assert brier_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 0])) == 0.25
    # example 0: (.9-1)^2 + .05^2 + .05^2 = .015; example 2: .3^2 + .3^2 = .18
    assert brier_score(PROBS[[0, 2]], LABELS[[0, 2]]) == pytest.approx((0.015 + 0.18) / 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ev = Evaluation(logits, torch.tensor([0, 0]), torch.nn.Identity())
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = 1 / (1 + math.e)
    assert METRICS.get("nll")(ev) == pytest.approx(-(math.log(p0) + math.log(p1)) / 2)


def test_calibration_rejects_bad_shapes():
    with pytest.raises(PrunelabError, match="probs"):
        expected_calibration_error(PROBS, LABELS[:3])
    with pytest.raises(PrunelabError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=0)


# ---------------------------------------------------------------- PIEs


def test_modal_rule_with_ties():
    # S = 4 seeds, 4 examples (columns)
    dense = torch.tensor([[3, 2, 0, 1], [3, 2, 0, 1], [5, 2, 4, 1], [5, 2, 4, 2]])
    pruned = torch.tensor([[5, 1, 4, 3], [5, 2, 4, 3], [5, 1, 0, 3], [1, 2, 1, 1]])
    assert modal_labels(dense, 6).tolist() == [3, 2, 0, 1]  # ties -> smallest label
    assert modal_sets(dense, 6)[0].nonzero().flatten().tolist() == [3, 5]
    r = pies(dense, pruned, labels=torch.tensor([3, 2, 4, 1]), num_classes=6)
    # col 0: dense {3, 5} vs pruned {5}: share 5 -> kept (a tie never forgets by itself)
    # col 1: dense {2} vs pruned {1, 2}: share 2 -> kept
    # col 2: dense {0, 4} vs pruned {4}: share 4 -> kept
    # col 3: dense {1} vs pruned {3}: disjoint -> PIE; dense modal 1 == label 1
    assert r.indices.tolist() == [3]
    assert r.fraction == 0.25
    assert r.dense_accuracy_on_pies == 1.0
    assert r.pruned_accuracy_on_pies == 0.0
    # elsewhere: dense modal labels 3, 2, 0 vs labels 3, 2, 4 -> 2/3
    assert r.dense_accuracy_elsewhere == pytest.approx(2 / 3)


def test_pies_without_any_forgotten_example_and_bad_input():
    p = torch.tensor([[0, 1, 2], [0, 1, 2]])
    r = pies(p, p, torch.tensor([0, 1, 2]), 3)
    assert r.count == 0 and r.fraction == 0.0 and math.isnan(r.dense_accuracy_on_pies)
    with pytest.raises(PrunelabError, match="same examples"):
        pies(p, p[:, :2], torch.tensor([0, 1, 2]), 3)
    with pytest.raises(PrunelabError, match="out of range"):
        pies(p, p + 1, torch.tensor([0, 1, 2]), 3)


# ---------------------------------------------------------------- per class


def test_per_class_recall_and_worst_class_drop():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert per_class_recall(torch.tensor([0, 1, 1, 1, 2, 0]), labels, 3).tolist() == [0.5, 1.0, 0.5]
    dense = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 0, 2, 2]), 3).float()
    pruned = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 2, 0]), 3).float()
    # dense recall [1, .5, 1], pruned [.5, 1, .5]: drops [.5, -.5, .5] -> worst .5
    ev = Evaluation(pruned, labels, torch.nn.Identity(), reference=dense)
    assert METRICS.get("worst_class_drop")(ev) == pytest.approx(0.5)


def test_welch_matches_scipy():
    g = np.random.default_rng(0)
    a, b = g.normal(0.8, 0.02, (5, 10)), g.normal(0.79, 0.05, (4, 10))
    t, df, p = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False, axis=0)
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-8)
    np.testing.assert_allclose(df, ref.df, rtol=1e-10)


def test_welch_degenerate_and_class_shifts():
    a = np.array([[0.5, 0.5], [0.5, 0.5]])
    b = np.array([[0.5, 0.4], [0.5, 0.4]])
    t, _, p = welch_t_test(b, a)
    assert t.tolist() == [0.0, -np.inf] and p.tolist() == [1.0, 0.0]
    dense = np.array([[0.90, 0.80], [0.91, 0.82], [0.89, 0.81]])
    pruned = np.array([[0.60, 0.80], [0.62, 0.83], [0.61, 0.79]])
    s = class_shifts(dense, pruned)
    assert s.classes == [0]
    assert s.delta[0] == pytest.approx(-0.29)
    with pytest.raises(PrunelabError, match=">= 2 samples"):
        class_shifts(dense[:1], pruned)


# ---------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_corruptions_are_deterministic_by_seed(name):
    x = (torch.rand(6, 1, 10, 10, generator=torch.Generator().manual_seed(0)) - 0.3) / 0.4
    a, b = corrupt(x, name, 2, seed=3), corrupt(x, name, 2, seed=3)
    assert torch.equal(a, b)
    assert a.shape == x.shape and not torch.equal(a, x)
    c = corrupt(x, name, 2, seed=4)
    assert torch.equal(a, c) == (name in ("blur", "contrast"))  # only these have no randomness
    lo, hi = x.min(), x.max()
    assert float(a.min()) >= float(lo) - 1e-5 and float(a.max()) <= float(hi) + 1e-5


def test_corruptions_work_in_pixel_space():
    mean, std = 0.2860, 0.3530
    pix = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    pix[0, 0, 0, 0], pix[0, 0, 0, 1] = 0.0, 1.0  # a black and a white pixel
    x = (pix - mean) / std
    for name in CORRUPTIONS.names():
        want = corrupt(pix, name, 3, seed=7, pixel_range=(0.0, 1.0))
        got = corrupt(x, name, 3, seed=7) * std + mean  # inferred range, mapped back
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_corruption_values_by_hand():
    img = torch.zeros(2, 1, 8, 8)
    img[:, :, :4] = 1.0  # top half white, mean 0.5
    contrast = corrupt(img, "contrast", 1, pixel_range=(0.0, 1.0))  # c = 0.4
    assert contrast.unique().tolist() == pytest.approx([0.3, 0.7])
    occl = corrupt(torch.zeros(3, 1, 20, 20), "occlusion", 2, pixel_range=(0.0, 1.0))
    assert ((occl == 0.5).sum(dim=(1, 2, 3)) == 8 * 8).all()  # side round(0.4 * 20) = 8
    flat = torch.full((1, 1, 9, 9), 0.3)
    torch.testing.assert_close(corrupt(flat, "blur", 3, pixel_range=(0.0, 1.0)), flat)


def test_corruption_errors():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(PrunelabError, match="did you mean 'blur'"):
        corrupt(x, "blurr", 1)
    with pytest.raises(PrunelabError, match="severity"):
        corrupt(x, "blur", 4)
    with pytest.raises(PrunelabError, match=r"\(N, C, H, W\)"):
        corrupt(x[0, 0], "blur", 1)
    with pytest.raises(PrunelabError, match="constant"):
        corrupt(torch.ones(2, 1, 4, 4), "blur", 1)
    with pytest.raises(PrunelabError, match="unknown corruption"):
        RobustnessSuite(corruptions=("fog",))


# ---------------------------------------------------------------- on a tiny real model


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits")
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    train(model, data.train, TrainConfig(epochs=3), torch.Generator().manual_seed(0))
    return data, model


def test_robustness_gap_with_and_without_precomputed_reference(trained):
    data, dense = trained
    suite = RobustnessSuite(max_examples=200)
    ctx = reference_context(dense, data.test, suite)
    prof = ctx["reference_robustness"]
    assert prof == robustness_profile(dense, data.test.x, data.test.y, suite)  # deterministic
    assert prof["drop"] > 0  # corruptions hurt a trained model
    same = evaluate(dense, data.test, reference=dense, metrics=["robustness_gap"], context=ctx)
    assert same["robustness_gap"] == 0.0
    pruned = build_model("cnn", (1, 8, 8), 10)
    pruned.load_state_dict(dense.state_dict())
    prune(pruned, "magnitude", sparsity=0.9)
    with_ctx = evaluate(
        pruned,
        data.test,
        reference=predict(dense, data.test.x),
        metrics=["robustness_gap", "corruption_drop"],
        context=ctx,
    )
    live = evaluate(
        pruned,
        data.test,
        reference=dense,
        metrics=["robustness_gap"],
        context={"robustness_suite": suite},
    )
    # the context's cached corrupted copies are exactly what the live path builds again
    assert with_ctx["robustness_gap"] == live["robustness_gap"]
    assert with_ctx["robustness_gap"] == pytest.approx(with_ctx["corruption_drop"] - prof["drop"])
    # another split never reuses the test split's cached copies
    other = evaluate(pruned, data.val, metrics=["corruption_drop"], context=ctx)
    fresh = evaluate(
        pruned, data.val, metrics=["corruption_drop"], context={"robustness_suite": suite}
    )
    assert other == fresh and other["corruption_drop"] != with_ctx["corruption_drop"]
    with pytest.raises(PrunelabError, match="reference_context"):
        evaluate(
            pruned, data.test, reference=predict(dense, data.test.x), metrics=["robustness_gap"]
        )


def test_train_val_gap_matches_separate_evaluations(trained):
    data, model = trained
    splits = {"train": data.train, "val": data.val}
    got = evaluate(model, data.test, metrics=["train_val_gap", "train_val_loss_gap"], splits=splits)
    tr = evaluate(model, data.train, metrics=["accuracy", "loss"])
    va = evaluate(model, data.val, metrics=["accuracy", "loss"])
    assert got["train_val_gap"] == pytest.approx(tr["accuracy"] - va["accuracy"], abs=1e-6)
    assert got["train_val_loss_gap"] == pytest.approx(va["loss"] - tr["loss"], abs=1e-6)
    with pytest.raises(PrunelabError, match="'train' split"):
        evaluate(model, data.test, metrics=["train_val_gap"])


def test_every_preservation_metric_runs_through_evaluate(trained):
    data, model = trained
    names = [
        "ece",
        "delta_ece",
        "nll",
        "brier",
        "worst_class_drop",
        "corrupt_accuracy",
        "corruption_drop",
        "robustness_gap",
        "relative_corruption_drop",
        "train_val_gap",
        "train_val_loss_gap",
    ]
    out = evaluate(
        model,
        data.test,
        reference=model,
        metrics=names,
        splits={"train": data.train, "val": data.val},
        context={"robustness_suite": RobustnessSuite(max_examples=100)},
    )
    assert all(math.isfinite(v) for v in out.values())
    assert out["delta_ece"] == 0.0 and out["worst_class_drop"] == 0.0
    assert out["relative_corruption_drop"] == pytest.approx(1.0)
    assert out["nll"] == pytest.approx(evaluate(model, data.test, metrics=["loss"])["loss"])


def test_retained_summary_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    dense = LevelRecords(
        torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]),
        [
            {
                "accuracy": 1.0,
                "ece": 0.1,
                "corruption_drop": 0.2,
                "train_val_gap": 0.0,
                "agreement": 1.0,
            }
        ]
        * 2,
    )
    pruned = LevelRecords(
        torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]]),
        [
            {
                "accuracy": 0.75,
                "ece": 0.15,
                "corruption_drop": 0.3,
                "train_val_gap": 0.05,
                "agreement": 0.75,
            },
            {
                "accuracy": 0.5,
                "ece": 0.25,
                "corruption_drop": 0.3,
                "train_val_gap": 0.05,
                "agreement": 0.5,
            },
        ],
    )
    s, pie, shifts = retained_summary(dense, pruned, labels, 2)
    # column 2: pruned votes {1, 0} tie vs dense {1} -> kept; column 3: {0} vs {1} -> PIE
    assert pie.indices.tolist() == [3] and s.pie_pct == 25.0
    assert s.accuracy_retained_pct == pytest.approx(62.5)
    assert s.delta_ece == pytest.approx(0.1)
    assert s.worst_class == 1 and s.worst_class_drop == pytest.approx(0.75)  # 1 - mean(.5, 0)
    assert s.robustness_gap == pytest.approx(0.1)
    assert shifts is not None and shifts.significant.tolist() == [False, False]
    # what a sweep stores: robustness_gap vs the reference dense model (drop 0.15 here)
    stored = [{k: v for k, v in r.items() if k != "corruption_drop"} for r in pruned.metrics]
    d_stored = [{k: v for k, v in r.items() if k != "corruption_drop"} for r in dense.metrics]
    for rows, drop in ((stored, 0.3), (d_stored, 0.2)):
        for r in rows:
            r["robustness_gap"] = drop - 0.15
    s2, _, _ = retained_summary(
        LevelRecords(dense.preds, d_stored), LevelRecords(pruned.preds, stored), labels, 2
    )
    assert s2.robustness_gap == pytest.approx(0.1)
    with pytest.raises(PrunelabError, match="one metrics row per seed"):
        LevelRecords(torch.zeros(2, 4, dtype=torch.long), [{}])


def test_summarize_results_pairs_levels_with_dense_controls():
    import pandas as pd

    from prunelab.decide.preservation import summarize_results

    preds = {"d0": [0, 0, 1, 1], "d1": [0, 0, 1, 1], "p0": [0, 0, 1, 0], "p1": [0, 0, 0, 0]}
    base = {
        "model": "m",
        "dataset": "x",
        "allocation": "global",
        "structure": "unstructured",
        "schedule": "oneshot",
        "ft_epochs": 1.0,
        "ece": 0.1,
        "corruption_drop": 0.2,
        "train_accuracy": 0.9,
        "val_accuracy": 0.85,
    }
    frame = pd.DataFrame(
        [
            {**base, "cell_id": "d0", "method": "dense", "level": 0.0, "seed": 0, "accuracy": 1.0},
            {**base, "cell_id": "d1", "method": "dense", "level": 0.0, "seed": 1, "accuracy": 1.0},
            {
                **base,
                "cell_id": "p1",
                "method": "magnitude",
                "level": 0.9,
                "seed": 1,
                "accuracy": 0.5,
            },
            {
                **base,
                "cell_id": "p0",
                "method": "magnitude",
                "level": 0.9,
                "seed": 0,
                "accuracy": 0.75,
            },
        ]
    )
    out = summarize_results(frame, lambda c: np.array(preds[c]), np.array([0, 0, 1, 1]), 2)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["pie_indices"] == [3] and row["pie_pct"] == 25.0
    assert row["accuracy_retained_pct"] == pytest.approx(62.5)
    assert row["train_val_gap"] == pytest.approx(0.05) and row["n_dense"] == 2
    with pytest.raises(PrunelabError, match="no dense control"):
        summarize_results(
            frame[frame["method"] != "dense"],
            lambda c: np.array(preds[c]),
            np.array([0, 0, 1, 1]),
            2,
        )


def test_preservation_plots_write_pngs(tmp_path):
    from prunelab.report.preservation_plots import (
        plot_class_recall,
        plot_pie_grid,
        plot_reliability,
    )

    imgs = np.random.default_rng(0).random((5, 1, 8, 8))
    p = plot_pie_grid(
        imgs, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 2, 3, 4, 0], tmp_path / "pies.png", columns=3
    )
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    r = plot_reliability({"dense": [b.numpy() for b in bins]}, tmp_path / "rel.png")
    c = plot_class_recall({"0.9": np.array([[0.9, 0.5], [0.8, 0.6]])}, tmp_path / "cls.png")
    for f in (p, r, c):
        assert f.stat().st_size > 1000 and f.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(PrunelabError, match="no forgotten"):
        plot_pie_grid(imgs[:0], [], [], [], tmp_path / "none.png")
