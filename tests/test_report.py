"""Report: figures, Markdown summary and HTML page built from a results table in the store schema.

The table is synthetic (the report reads tables, never models) but every number the report
prints is recomputed here independently from that table.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prunelab.decide.analysis import default_units
from prunelab.errors import PrunelabError
from prunelab.report import ReportExtras, build_report, curve_labels, pareto_mask
from prunelab.report.frame import aggregate, metric_columns
from prunelab.report.summary import render_summary
from prunelab.report.tables import best_per_level, efficiency_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98)
EVIL = "<script>alert(1)</script>"
ROOT = Path(__file__).resolve().parents[1]


def _row(method: str, level: float, seed: int, rng: np.random.Generator, fragility: float):
    drop = fragility * (level / (1 - level)) ** 1.5 / 100 if level else 0.0
    acc = float(np.clip(0.95 - drop + rng.normal(0, 0.004), 0.1, 1))
    params = 266_200
    return {
        "cell_id": f"{method}-{level}-{seed}",
        "model": "lenet300",
        "dataset": "fashion-mnist",
        "method": method,
        "allocation": "global",
        "structure": "unstructured",
        "schedule": "oneshot",
        "level": level,
        "seed": seed,
        "ft_epochs": 1.0,
        "accuracy": acc,
        "macro_f1": acc - 0.01,
        "loss": 1.2 - acc,
        "agreement": min(1.0, acc + 0.04),
        "kl": (0.96 - acc) * 2,
        "ece": 0.02 + drop / 4,
        "sparsity": level,
        "nonzeros": round(params * (1 - level)),
        "params": params,
        "macs": params * (1 - level),
        "latency_b1_ms": 0.2 * (1 - level / 2),
        "disk_bytes": 4 * params * (1 - level) + 1000,
        "val_accuracy": acc,
        "oneshot_accuracy": acc - 0.05,
        "train_accuracy": acc + 0.02,
        "train_loss": 1.1 - acc,
        "layer_sparsity": json.dumps({"fc1": level}),
        "duration_s": 1.5,
    }


def synthetic_results(methods=("magnitude", "random"), seed: int = 0) -> pd.DataFrame:
    """2 methods x 5 levels x 2 seeds + 2 dense rows, in the store's schema."""
    rng = np.random.default_rng(seed)
    fragility = {"magnitude": 0.5, "random": 3.0}
    rows = [_row("dense", 0.0, s, rng, 0.0) for s in (0, 1)]
    rows += [
        _row(m, lv, s, rng, fragility.get(m, 1.0)) for m in methods for lv in LEVELS for s in (0, 1)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    df = synthetic_results(methods=("magnitude", EVIL))
    rng = np.random.default_rng(1)
    extras = ReportExtras(
        knees={"magnitude": 0.95, EVIL: 0.9},
        recommendation={
            "level": 0.9,
            "method": "magnitude",
            "interval": (0.85, 0.95),
            "metric": "accuracy",
            "evidence": [{"level": 0.9, "drop": 0.004}],
        },
        tolerances={"accuracy": 0.01},
        sensitivity=pd.DataFrame(
            {
                "layer": ["fc1", "fc1", "fc2", "fc2"],
                "level": [0.5, 0.9] * 2,
                "value": [0.0, 0.02, 0.01, 0.2],
            }
        ),
        weights={"fc1": rng.normal(size=500) * (rng.random(500) > 0.9)},
        forgotten_images=rng.random((6, 1, 8, 8)),
        forgotten_labels=np.arange(6),
        forgotten_preds=np.arange(6)[::-1],
        spec={"model": "lenet300", "note": EVIL},
        title=f"demo {EVIL}",
    )
    run_dir = tmp_path_factory.mktemp("run")
    return df, build_report(run_dir, df, extras)


def test_writes_valid_distinct_pngs(report):
    _, paths = report
    expected = {f"curve_{m}" for m in ("accuracy", "agreement", "kl", "macro_f1", "loss", "ece")}
    assert expected | {"pareto", "sensitivity", "weights", "forgotten"} == set(paths.plots)
    blobs = {name: p.read_bytes() for name, p in paths.plots.items()}
    assert all(b.startswith(PNG_MAGIC) and len(b) > 2000 for b in blobs.values())
    assert len(set(blobs.values())) == len(blobs)  # every figure is a different image


def test_curve_figure_draws_one_line_per_curve_and_the_marks_asked_for():
    from prunelab.report.plots import curve_figure

    df = synthetic_results()
    fig = curve_figure(df, "accuracy", {"random": 0.9}, tolerance=0.02, original=0.93)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
    mean = df[df.method == "dense"].accuracy.mean()
    # both references: the original model as given and the dense control
    assert set(lines) == {"magnitude", "random", f"dense control {mean:.4g}", "original 0.93"}
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [1.0]  # random's knee, 90 %
    assert stars[0].get_color() == lines["random"].get_color()
    want = df[(df.method == "magnitude")].groupby("level").accuracy.mean()
    assert np.allclose(lines["magnitude"].get_ydata(), want.to_numpy())
    assert len(ax.collections) == 2 and len(ax.patches) == 1  # two min-max bands, one tolerance
    assert ax.get_legend_handles_labels()[1][-1] == "tolerance: dense − 0.02"
    assert "higher is better" in ax.get_ylabel()
    low = curve_figure(df, "kl", tolerance=0.1, higher_is_better=False).axes[0]
    assert "lower is better" in low.get_ylabel()
    (band,) = low.patches  # above the dense control: a higher KL is worse
    dense_kl = df[df.method == "dense"].kl.mean()
    assert band.get_bbox().y0 == pytest.approx(dense_kl)
    assert band.get_bbox().y1 == pytest.approx(dense_kl + 0.1)


def test_html_sections_images_escaping_and_no_external_urls(report):
    _, paths = report
    page = paths.html.read_text()
    for heading in (
        "Recommendation",
        "Metrics vs sparsity",
        "Results by level",
        "Layer sensitivity",
        "Pareto front",
        "Efficiency",
        "Weight histograms",
        "Forgotten examples",
        "All results",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert page.count('src="data:image/png;base64,') == len(paths.plots)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    srcs = re.findall(r"""(?:src|href)=["']([^"']*)""", page)
    assert srcs and not any(s.lower().startswith(("http", "//")) for s in srcs)
    assert "<link" not in page and "url(" not in page and "@import" not in page
    assert "Ship <b>magnitude</b> at <b>90%</b>" in page


def test_knees_and_tolerance_change_the_figure(tmp_path):
    from prunelab.report.plots import plot_metric_curves

    df = synthetic_results()
    plain = plot_metric_curves(df, "accuracy", tmp_path / "a.png").read_bytes()
    knee = plot_metric_curves(df, "accuracy", tmp_path / "b.png", knees={"random": 0.9})
    tol = plot_metric_curves(df, "accuracy", tmp_path / "c.png", tolerance=0.02)
    assert len({plain, knee.read_bytes(), tol.read_bytes()}) == 3


def test_html_skips_missing_sections_with_a_note(tmp_path):
    df = synthetic_results().drop(columns=["macs", "latency_b1_ms", "disk_bytes"])
    page = build_report(tmp_path, df).html.read_text()
    assert "No recommendation was computed" in page
    assert "No layer-sensitivity scan" in page and "recorded no macs" in page
    assert "<h2>Pareto front</h2><figure>" in page  # nonzeros still gives a Pareto plot


def test_summary_numbers_equal_dataframe_means(report):
    df, paths = report
    text = paths.summary.read_text()
    for (method, level), g in df[df.method != "dense"].groupby(["method", "level"]):
        acc, agr = g["accuracy"], g["agreement"]
        want = (
            f"| {level:g} | {method} | {acc.mean():.4f} ± {acc.std():.4f} | "
            f"{agr.mean():.4f} ± {agr.std():.4f} |"
        )
        assert want in text
    dense = df[df.method == "dense"]["accuracy"]
    assert f"| accuracy | – | {dense.mean():.4f} ± {dense.std():.4f} |" in text  # no original given


def test_best_method_per_level_and_direction():
    df = synthetic_results()
    best = best_per_level(df, "accuracy")
    means = df[df.method != "dense"].groupby(["level", "method"])["accuracy"].mean().unstack()
    assert list(best["curve"]) == list(means.idxmax(axis=1))
    worst_kl = best_per_level(df, "kl", higher_is_better=False)  # magnitude (more robust) wins
    assert set(worst_kl["curve"]) == {"magnitude"}
    units = default_units()
    assert "## Best method per level (by accuracy)" in render_summary(df, units)
    kl_units = dataclasses.replace(units, primary="kl")  # a lower-is-better primary
    text = render_summary(df, kl_units)
    assert "Primary metric: **kl** (lower is better)" in text and "(by kl)" in text


def test_pareto_mask_on_hand_made_points():
    cost = np.array([10, 20, 20, 30, 40, 40, 5])
    value = np.array([0.5, 0.8, 0.7, 0.8, 0.9, 0.9, 0.2])
    # (20,0.7) loses to (20,0.8); (30,0.8) loses to (20,0.8); the two (40,0.9) tie and stay
    assert pareto_mask(cost, value).tolist() == [True, True, False, False, True, True, True]
    with pytest.raises(
        PrunelabError, match=r"pareto needs two equal 1D arrays, got \(3,\), \(2,\)"
    ):
        pareto_mask(np.ones(3), np.ones(2))


def test_labels_aggregate_and_metric_columns():
    df = synthetic_results()
    df.loc[df.method == "random", "allocation"] = "uniform"
    labels = set(curve_labels(df))
    assert labels == {"dense", "magnitude · global", "random · uniform"}
    agg = aggregate(df, "accuracy")
    g = df[(df.method == "random") & (df.level == 0.9)]["accuracy"]
    row = agg[(agg.curve == "random · uniform") & (agg.level == 0.9)].iloc[0]
    assert (row["mean"], row["min"], row["max"], row["n"]) == (g.mean(), g.min(), g.max(), 2)
    assert metric_columns(df)[:4] == ["accuracy", "agreement", "kl", "macro_f1"]
    assert "val_accuracy" not in metric_columns(df) and "nonzeros" not in metric_columns(df)


def test_efficiency_speedups_are_ratios_to_dense():
    df = synthetic_results()
    table = efficiency_table(df)
    row = table[(table.curve == "magnitude") & (table.level == 0.9)].iloc[0]
    dense_macs = df[df.method == "dense"]["macs"].mean()
    assert row["MAC speedup"] == pytest.approx(dense_macs / (266_200 * 0.1))
    assert efficiency_table(df.drop(columns=["macs", "latency_b1_ms", "disk_bytes"])) is None


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(PrunelabError, match="empty"):
        build_report(tmp_path, synthetic_results().iloc[:0])
    with pytest.raises(PrunelabError, match="only dense"):
        build_report(tmp_path, synthetic_results().query("method == 'dense'"))
    with pytest.raises(PrunelabError, match="lacks column"):
        build_report(tmp_path, pd.DataFrame({"method": ["x"]}))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, paths = report
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "screenshot_report.py"),
            str(paths.html),
            str(shot),
        ],
        check=True,
        timeout=120,
    )
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000
