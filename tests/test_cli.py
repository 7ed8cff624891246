"""The CLI through Typer's test runner: real sweeps on digits, and one-line errors (exit 2)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.report.plots import format_level
from prunelab.sweep.store import load_results

runner = CliRunner()
TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp-tiny",
    "--dense-epochs",
    "3",
    "--ft-epochs",
    "0.5",
    "--quiet",
]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real CLI sweep shared by the tests below: 2 methods x 2 allocations x 2 levels."""
    out = tmp_path_factory.mktemp("run") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        result = invoke("sweep", "--out", str(out), "--levels", "0.5,0.9", *TINY)
        assert result.exit_code == 0, result.output
        yield out


def _report_says(html: str) -> tuple[str, str] | None:
    """(configuration, level) of the report's recommendation headline, None if it has none."""
    if "No sparsity level met the recommendation criteria." in html:
        return None
    found = re.search(r"Ship <b>([^<]*)</b> at <b>([^<]*)</b> sparsity", html)
    assert found, "the report neither recommends a level nor says that none holds"
    return found.group(1), found.group(2)


def _cli_says(run_dir, max_drop: str) -> tuple[str, str] | None:
    """(configuration, level) that ``prunelab recommend`` prints, in the report's formats."""
    result = invoke("recommend", str(run_dir), "--max-drop", max_drop)
    first = result.output.splitlines()[0]
    if result.exit_code == 1:
        assert first.startswith("No level meets the tolerance"), result.output
        return None
    assert result.exit_code == 0, result.output
    found = re.match(r"Ship sparsity ([0-9.]+) \(([^)]*)\)", first)
    assert found, first
    cfg = dict(kv.split("=") for kv in found.group(2).split(", "))
    shown = " · ".join(v for k, v in cfg.items() if k != "ft_epochs")
    return shown, format_level(float(found.group(1)))


def _tab10_colours_drawn(png) -> int:
    """How many of matplotlib's tab10 colours (grey left out: antialiasing makes greys) cover
    at least 20 pixels of the PNG exactly: one per drawn curve."""
    from matplotlib import colormaps
    from matplotlib.image import imread

    rgb = (imread(png)[..., :3] * 255).round().astype(int)  # (H, W, 3)
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    return sum(
        int((rgb == (np.array(c) * 255).round().astype(int)).all(-1).sum() >= 20) for c in palette
    )


def test_sweep_writes_results_plots_and_report(run_dir):
    df = load_results(run_dir)
    assert len(df) == 1 + 2 * 2 * 2
    pruned = df[df.method != "dense"]
    assert (pruned.sparsity - pruned.level).abs().max() < 1e-3
    html = (run_dir / "report.html").read_text()
    # the report's recommendation (written by the sweep at 0.5 points) is `recommend`'s
    assert _report_says(html) == _cli_says(run_dir, "0.5")
    # one curve per (method, allocation) in the accuracy figure
    assert _tab10_colours_drawn(run_dir / "plots" / "curve_accuracy.png") == 4
    at90 = pruned[pruned.level == 0.9].groupby(["method", "allocation"]).accuracy.mean()
    (method, allocation), best = at90.idxmax(), at90.max()
    line = f"| 0.9 | {method} · {allocation} | {best:.4f} |"  # best method per level
    assert line in (run_dir / "summary.md").read_text()
    mag = pruned[(pruned.method == "magnitude") & (pruned.allocation == "global")]
    rnd = pruned[(pruned.method == "random") & (pruned.allocation == "global")]
    assert mag.set_index("level").accuracy[0.9] > rnd.set_index("level").accuracy[0.9]


def test_report_shows_the_stored_robustness_gap(run_dir):
    from prunelab.report.run import retained_table
    from prunelab.sweep.store import Store

    df = load_results(run_dir)
    with Store(run_dir) as store:
        table = retained_table(df, store)
    assert table["robustness_gap"].notna().all()
    row = table[(table.method == "magnitude") & (table.allocation == "global")]
    cells = df[(df.method == "magnitude") & (df.allocation == "global") & (df.level == 0.9)]
    want = cells.robustness_gap.mean() - df[df.method == "dense"].robustness_gap.mean()
    assert row[row.level == 0.9].robustness_gap.item() == pytest.approx(want)


def test_rerun_resumes_without_redoing(run_dir):
    before = load_results(run_dir).set_index("cell_id")
    result = invoke("sweep", "--out", str(run_dir), "--levels", "0.5,0.9", *TINY)
    assert result.exit_code == 0, result.output
    assert "0 cells ran, 9 resumed" in result.output
    after = load_results(run_dir).set_index("cell_id")
    assert after.index.equals(before.index)


def _reaching(run_dir, level: float) -> tuple[str, str, float]:
    """(method, allocation, tolerance): the smallest validation tolerance at which some
    configuration holds at every level up to ``level``: its largest upper 95% bound of the drop
    (paired bootstrap over the validation rows; one seed) among those levels."""
    from prunelab.report.run import run_recommendation, run_records, run_units

    df = load_results(run_dir)
    rec = run_recommendation(df, run_units(run_dir), max_drop=1, records=run_records(run_dir, df))
    ev = rec.evidence[rec.evidence.requested <= level]
    worst = ev.groupby(["method", "allocation"])["drop_hi"].max().clip(lower=0)
    (method, allocation), needed = worst.idxmin(), worst.min()
    return method, allocation, float(needed)


def test_report_command_rebuilds_with_the_shipped_weights(run_dir):
    method, allocation, needed = _reaching(run_dir, 0.5)  # the tiny MLP: 0.9 drops too much
    tol = f"{100 * needed + 1e-6:.10f}"
    (run_dir / "report.html").unlink()
    result = invoke("report", str(run_dir), "--max-drop", tol)
    assert result.exit_code == 0, result.output
    html = (run_dir / "report.html").read_text()
    assert (
        _report_says(html)
        == _cli_says(run_dir, tol)
        == (
            f"{method} · {allocation} · unstructured · oneshot",
            "50%",
        )
    )
    assert "<h2>Weight histograms</h2><figure>" in html  # the recommended cell's weights


def test_list_shows_every_registry():
    result = invoke("list")
    assert result.exit_code == 0
    lines = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert {"methods", "allocations", "metrics", "datasets", "models"} <= set(lines)
    assert (
        lines["methods"] == "admm-grad, magnitude, random, sparsegpt, taylor, wanda"
    )  # no snip: it ranks as taylor
    assert "global" in lines["allocations"].split(", ") and "lamp" in lines["allocations"]
    assert {"fashion-mnist", "digits"} <= set(lines["datasets"].split(", "))
    assert "latency_b1_ms" in lines["metrics"].split(", ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "magnitud"], "unknown method 'magnitud' (did you mean 'magnitude'?)"),
        (["--levels", "0.5,1.5"], "sparsity level 1.5 is outside (0, 1)"),
        (["--levels", "0.9,0.5"], "strictly increasing"),
        (["--levels", "a,b"], "cannot parse levels"),
        (["--data-dir", "/nonexistent/dir"], "does not exist"),
        (["--ft-epochs", "-1"], "fine-tune epochs must be >= 0"),
        (["--allocations", "globl"], "unknown allocation 'globl'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2(tmp_path, args, message):
    result = invoke("sweep", "--out", str(tmp_path / "r"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_malformed_toml_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("levels = [0.5, \n model = ")
    result = invoke("sweep", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "malformed TOML" in result.output and "Traceback" not in result.output


def test_unknown_toml_key_is_rejected(tmp_path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text('model = "mlp-tiny"\nlevel = [0.5]\n')
    result = invoke("sweep", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "unknown sweep option(s) ['level']" in result.output


def test_toml_spec_runs(tmp_path, cache_dir):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'model = "mlp-tiny"\nmethods = ["magnitude"]\nallocations = ["global"]\n'
        'levels = "0.3:0.6:0.3"\nseeds = [0, 1]\n[data]\nname = "digits"\n'
        "[dense]\nepochs = 2\n[finetune]\nepochs = 0\n"
    )
    result = invoke(
        "sweep", "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet", "--no-report"
    )
    assert result.exit_code == 0, result.output
    df = load_results(tmp_path / "r")
    assert sorted(df[df.method != "dense"].level.unique()) == [0.3, 0.6]
    assert sorted(df.seed.unique()) == [0, 1]


def test_different_sweep_in_same_dir_is_refused(run_dir):
    result = invoke("sweep", "--out", str(run_dir), "--levels", "0.5", *TINY)
    assert result.exit_code == 2 and "holds a different sweep" in result.output
    assert len(load_results(run_dir)) == 9  # nothing lost


def test_report_on_missing_or_corrupt_store(tmp_path):
    result = invoke("report", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database" * 100)
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2 and "corrupt results store" in result.output


def test_store_is_sqlite_wal(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_recommend_holds_exactly_at_the_hand_computed_tolerance(run_dir):
    """One seed: a configuration holds at a level when the upper 95% bound of its validation
    drop is within the tolerance, and at every lower level too. The smallest tolerance that
    lets some configuration reach 0.5 is read from the evidence table (the tiny MLP loses too
    much at 0.9 for a tolerance that does not accept a dead model)."""
    method, allocation, needed = _reaching(run_dir, 0.5)
    result = invoke("recommend", str(run_dir), "--max-drop", f"{100 * needed + 1e-6:.10f}")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Ship sparsity 0.5 (method={method}, allocation={allocation}")
    assert "holds" in result.output  # the evidence table follows
    if needed > 1e-4:  # a hair less and no configuration reaches 0.5
        below = invoke("recommend", str(run_dir), "--max-drop", f"{100 * needed - 1e-3:.10f}")
        assert below.output.startswith("No level meets the tolerance"), below.output


def test_one_seed_interval_has_width_and_names_its_reference(run_dir):
    """The default single seed still gets a real interval: the validation rows are resampled
    in pairs (reference and cell on the same rows). Its upper bound matches the normal
    approximation mean + 1.645 se of the per-row paired differences, computed here from the
    stored per-row records; the summary names its reference and states the rule."""
    from prunelab.decide.reference import CONTROL, ORIGINAL
    from prunelab.report.run import run_recommendation, run_records, run_units

    df = load_results(run_dir)
    records = run_records(run_dir, df)
    tol = 100 * _reaching(run_dir, 0.5)[2] + 1e-6
    rec = run_recommendation(df, run_units(run_dir), max_drop=tol, records=records)
    assert rec.level == 0.5 and rec.n_seeds == 1 and rec.reference in (ORIGINAL, CONTROL)
    lo, hi = rec.interval
    assert hi - lo > 0.01
    dense = df[df.method == "dense"].iloc[0]
    ref = records.originals if rec.reference == ORIGINAL else records.cells
    right = lambda r: (r["pred"] == r["label"]).astype(float)  # noqa: E731
    for _, row in rec.evidence.iterrows():
        cid = df[(df.method == row.method) & (df.allocation == row.allocation)
                 & (df.level == row.requested)].cell_id.item()  # fmt: skip
        diff = right(ref[dense.cell_id]) - right(records.cells[cid])  # (N,) paired per row
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        assert row["drop"] == pytest.approx(diff.mean(), abs=1e-12)
        assert row["drop_hi"] == pytest.approx(diff.mean() + 1.645 * se, abs=0.35 * se + 1e-9)
    result = invoke("recommend", str(run_dir), "--max-drop", f"{tol:.10f}")
    first = result.output.splitlines()[0]
    assert re.search(r"95% bounds \[[-+]0\.\d{4}, [-+]0\.\d{4}\]", first), first
    assert f"Reference: the {rec.reference}" in first and "non-inferiority" in first
    assert "the interval is a point" not in first
    narrower = run_recommendation(df, run_units(run_dir), max_drop=tol, confidence=0.8,
                                  records=records)  # fmt: skip
    assert narrower.interval[1] - narrower.interval[0] < hi - lo
    at80 = invoke("recommend", str(run_dir), "--max-drop", f"{tol:.10f}", "--confidence", "0.8")
    assert "80% bounds" in at80.output and "at 80% confidence" in at80.output
    bad = invoke("recommend", str(run_dir), "--confidence", "1.5")
    assert bad.exit_code == 2 and "confidence must be in [0.5, 1)" in bad.output


def test_recommend_reports_when_no_level_holds(run_dir):
    result = invoke("recommend", str(run_dir), "--min-value", "0.999")
    assert result.exit_code == 1
    assert "No level meets the tolerance" in result.output


def test_recommend_takes_one_tolerance_or_the_tasks_default(run_dir):
    both = invoke("recommend", str(run_dir), "--max-drop", "1", "--min-value", "0.5")
    assert both.exit_code == 2 and "one of --max-drop or --min-value" in both.output
    default = invoke("recommend", str(run_dir))  # classification: 0.5 points of accuracy
    explicit = invoke("recommend", str(run_dir), "--max-drop", "0.5")
    assert "0.5 points of accuracy (0.005)" in default.output
    assert default.output == explicit.output


def test_sensitivity_allocation_in_a_sweep_stores_its_table(tmp_path, cache_dir):
    from prunelab.sweep.store import Store

    out = tmp_path / "r"
    result = invoke(
        "sweep",
        "--out",
        str(out),
        "--levels",
        "0.5,0.8",
        "--methods",
        "magnitude",
        "--allocations",
        "global,sensitivity",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    df = load_results(out)
    sens = df[df.allocation == "sensitivity"]
    assert (sens.sparsity - sens.level).abs().max() < 1e-3
    with Store(out) as store:
        table = store.get_meta("sensitivity/magnitude/seed0")
    assert {r["layer"] for r in table} == {"1", "3", "5"}
    assert "Layer sensitivity" in (out / "report.html").read_text()


LATENCY = ["latency_b1_ms", "latency_b256_ms", "latency_threads"]


def test_latency_is_recorded_only_when_asked(run_dir, tmp_path, cache_dir):
    import torch

    assert not set(LATENCY) & set(load_results(run_dir).columns)  # run_dir: no --latency
    out = tmp_path / "r"
    one = ["--methods", "magnitude", "--allocations", "global", "--levels", "0.5"]
    result = invoke("sweep", "--out", str(out), "--latency", *one, *TINY)
    assert result.exit_code == 0, result.output
    df = load_results(out)
    assert len(df) == 2 and df[LATENCY].notna().all().all()
    assert (df["latency_b1_ms"] > 0).all() and (df["latency_b256_ms"] > df["latency_b1_ms"]).all()
    assert (df["latency_threads"] == torch.get_num_threads()).all()
    html = (out / "report.html").read_text()
    assert "speedup b1" in html and f"{torch.get_num_threads()} torch thread(s)" in html


def test_toml_latency_switch(tmp_path):
    from prunelab.errors import PrunelabError
    from prunelab.sweep import spec_from_dict

    spec = spec_from_dict({"model": "mlp-tiny", "metrics": ["ece"], "latency": True})
    assert spec.metrics == ("ece", *LATENCY)
    assert spec_from_dict({"model": "mlp-tiny", "latency": False}).metrics == ()
    with pytest.raises(PrunelabError, match="latency must be true or false"):
        spec_from_dict({"latency": "yes"})


def test_python_dash_m_prunelab_is_the_prunelab_command():
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "prunelab", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    listed = run("list", "methods")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == invoke("list", "methods").output
    helped = run("--help")
    assert helped.returncode == 0 and "Usage: python -m prunelab" in helped.stdout
    for command in ("sweep", "report", "recommend", "export", "list"):
        assert re.search(rf"│ {command} ", helped.stdout), command
    bad = run("recommend", "/nonexistent/run", "--max-drop", "1")
    assert bad.returncode == 2 and "does not exist" in bad.stderr  # same exit codes too


def test_kfold_cross_validation_decides_with_folds_x_seeds(tmp_path, monkeypatch):
    """--folds 3: one dense model per fold (trained on the other two), each cell once per fold,
    validated on the held-out one. Drops pair each pruned cell with the reference of its own
    fold and seed, row by row; the folds' rows are pooled (weighted by size), never bootstrapped
    as independent replicates, so the evidence counts 2 seeds over all pooled rows."""
    from prunelab.decide.reference import ORIGINAL
    from prunelab.report.run import run_recommendation, run_records, run_units

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cv"
    res = invoke(
        "sweep",
        "--out",
        str(out),
        "--levels",
        "0.5,0.9",
        "--methods",
        "magnitude",
        "--allocations",
        "global",
        "--seeds",
        "0,1",
        "--folds",
        "3",
        "--no-report",
        *TINY,
    )
    assert res.exit_code == 0, res.output
    df = load_results(out)
    assert sorted(df.fold.unique()) == [0, 1, 2] and len(df) == 2 * 3 * (1 + 2)
    # the held-out folds differ: the dense control's validation accuracy is not one number
    dense = df[df.method == "dense"].set_index(["seed", "fold"])
    assert dense.val_accuracy.nunique() > 1
    records = run_records(out, df)
    rec = run_recommendation(df, run_units(out), max_drop=20.0, records=records)
    ref = records.originals if rec.reference == ORIGINAL else records.cells
    pruned = df[(df.method == "magnitude") & (df.level == 0.5)].set_index(["seed", "fold"])
    wrong, rows = {0: 0.0, 1: 0.0}, 0
    for (seed, fold), row in pruned.iterrows():
        r, c = ref[dense.loc[(seed, fold), "cell_id"]], records.cells[row.cell_id]
        wrong[seed] += float((r["pred"] == r["label"]).sum() - (c["pred"] == c["label"]).sum())
        rows += len(c["pred"]) if seed == 0 else 0
    assert rows == 1197 + 200  # digits' train + val, pooled and cut in three
    by_hand = sum(wrong.values()) / 2 / rows
    row = rec.evidence[rec.evidence.requested == 0.5].iloc[0]
    assert row["drop"] == pytest.approx(by_hand, abs=1e-12) and row["n_seeds"] == 2
    assert row["rows"] == rows and row["drop_hi"] > row["drop"] > row["drop_lo"]
    assert "2 seed(s), 3-fold cross-validation" in rec.summary()
    res = invoke("recommend", str(out), "--max-drop", "20")  # 30 would accept a dead model
    assert "3-fold cross-validation" in res.output


def test_sparsegpt_in_a_sweep_updates_kept_weights(tmp_path, monkeypatch):
    """methods = sparsegpt: exact sparsity per level, and the kept weights are *changed*
    (reconstruction), unlike magnitude's, which keeps them as they were."""
    from prunelab.sweep.cell import run_cell
    from prunelab.sweep.context import Context
    from prunelab.sweep.plan import expand_cells
    from prunelab.sweep.spec import spec_from_dict

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    spec = spec_from_dict(
        {
            "model": "mlp-tiny",
            "data": {"name": "digits"},
            "methods": ["sparsegpt", "magnitude"],
            "allocations": ["uniform"],
            "levels": [0.5, 0.8],
            "seeds": [0],
            "dense": {"epochs": 3},
            "finetune": {"epochs": 0},
            "sensitivity_scan": False,
        }
    )
    cells = [c for c in expand_cells(spec) if c.method != "dense"]
    ctx = Context.build(cells[0])
    dense = ctx.dense_copy()
    for cell in cells:
        res = run_cell(cell, ctx, keep_model=True)
        assert res.row["sparsity"] == pytest.approx(cell.level, abs=2e-3)
        w, w0 = res.model[1].weight.detach(), dense[1].weight.detach()
        kept = w != 0
        changed = bool((w[kept] != w0[kept]).any())
        assert changed == (cell.method == "sparsegpt"), cell.label
    res = invoke(
        "sweep",
        "--out",
        str(tmp_path / "r"),
        "--methods",
        "sparsegpt,random",
        "--levels",
        "0.8",
        "--seeds",
        "0",
        "--no-report",
        *TINY,
    )
    assert res.exit_code == 0, res.output
    acc = load_results(tmp_path / "r").groupby("method").accuracy.min()
    assert acc["sparsegpt"] > acc["random"] + 0.2
