"""Sweeps end to end: cell expansion, the store, resume after SIGKILL, parallel = sequential."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from prunelab import TrainConfig
from prunelab.errors import PrunelabError
from prunelab.sweep import DataSpec, SweepSpec, expand_cells, make_executor, run_sweep
from prunelab.sweep.context import ContextCache
from prunelab.sweep.spec import parse_levels, spec_from_dict
from prunelab.sweep.store import Store, load_results

DIGITS = DataSpec(name="digits")


def tiny_spec(**kw) -> SweepSpec:
    base = {
        "model": "mlp-tiny",
        "data": DIGITS,
        "dense": TrainConfig(epochs=3),
        "finetune": TrainConfig(epochs=0.5),
        "levels": (0.5, 0.9),
    }
    return SweepSpec(**{**base, **kw})


def test_parse_levels_forms():
    assert parse_levels("0.1:0.5:0.1") == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert parse_levels("0.5,0.8") == (0.5, 0.8)
    with pytest.raises(PrunelabError, match="step must be > 0"):
        parse_levels("0.1:0.5:0")


def test_expand_cells_counts_and_nm_has_one_level():
    spec = tiny_spec(structures=("unstructured", "2:4"), seeds=(0, 1))
    cells = expand_cells(spec)
    nm = [c for c in cells if str(c.structure) == "2:4"]  # a parsed NM(2, 4), not a string
    assert {c.level for c in nm} == {0.5} and len(nm) == 2 * 2  # 2 methods x 2 seeds
    unstructured = [c for c in cells if str(c.structure) == "unstructured"]
    assert len(unstructured) == 2 * 2 * 2 * 2  # methods x allocations x levels x seeds
    assert len({c.cell_id for c in cells}) == len(cells)


def test_cell_id_changes_with_any_field():
    a, b = expand_cells(tiny_spec())[1], expand_cells(tiny_spec(finetune=TrainConfig(epochs=1)))[1]
    assert a.level == b.level and a.cell_id != b.cell_id


def test_process_pool_gives_the_same_rows_as_sequential(tmp_path, cache_dir):
    spec = tiny_spec(methods=("magnitude",), allocations=("global",))
    run_sweep(spec, tmp_path / "seq")
    run_sweep(spec, tmp_path / "pool", make_executor("local", workers=2))
    cols = ["cell_id", "accuracy", "agreement", "kl", "sparsity", "val_accuracy"]
    seq = load_results(tmp_path / "seq")[cols].sort_values("cell_id").reset_index(drop=True)
    pool = load_results(tmp_path / "pool")[cols].sort_values("cell_id").reset_index(drop=True)
    # Worker processes run with fewer torch threads, which may reorder float reductions.
    assert (seq.cell_id == pool.cell_id).all()
    numeric = cols[1:]
    assert ((seq[numeric] - pool[numeric]).abs() < 1e-5).all().all(), (seq, pool)


def test_sensitivity_scan_jobs_equal_one_scan_and_are_redone_when_missing(tmp_path, cache_dir):
    from prunelab.decide.sensitivity import sensitivity_analysis
    from prunelab.prune.criteria import compute_scores
    from prunelab.prune.targets import select_targets
    from prunelab.sweep.model_aware import SENSITIVITY_VAL_ROWS
    from prunelab.sweep.run import SCAN_KEY

    spec = tiny_spec(methods=("magnitude",), allocations=("global",))
    phases: list[str] = []
    run_sweep(spec, tmp_path / "seq", progress=lambda phase, done, total: phases.append(phase))
    assert "sensitivity scan of layer 1" in phases  # the progress bar names what runs
    run_sweep(spec, tmp_path / "pool", make_executor("local", workers=2))  # jobs in workers
    cell = expand_cells(spec)[0]
    ctx = ContextCache(cache_dir).get(cell)
    dense = ctx.dense_copy()
    scores = compute_scores(dense, select_targets(dense), "magnitude")
    whole = sensitivity_analysis(dense, scores, ctx.data.val.subset(SENSITIVITY_VAL_ROWS))
    with Store(tmp_path / "seq") as a, Store(tmp_path / "pool") as b:
        seq_scan = a.get_meta(SCAN_KEY)
        assert seq_scan == whole.to_dict("records")  # per-layer jobs == one scan, in order
        assert len({r["layer"] for r in seq_scan}) == len(scores) > 1
        pool = b.get_meta(SCAN_KEY)
        assert [r["layer"] for r in pool] == [r["layer"] for r in seq_scan]
        assert all(abs(p["kl"] - q["kl"]) < 1e-5 for p, q in zip(pool, seq_scan, strict=True))
        a.set_meta(SCAN_KEY, None)  # as if the sweep had been killed during the scan
    outcome = run_sweep(spec, tmp_path / "seq")
    assert outcome.ran == 0
    with Store(tmp_path / "seq") as a:
        assert a.get_meta(SCAN_KEY) == seq_scan


def test_eager_and_compiled_engines_agree_and_are_recorded(tmp_path, cache_dir):
    from prunelab.measure.inference import set_engine

    spec = tiny_spec(methods=("magnitude",), allocations=("global",))
    cols = ["accuracy", "agreement", "kl", "loss", "val_loss", "ece"]
    runs = {}
    try:
        for engine in ("eager", "auto"):
            set_engine(engine)
            run_sweep(spec, tmp_path / engine)
            with Store(tmp_path / engine) as store:
                assert store.get_meta("env")["engine"] == engine
            runs[engine] = load_results(tmp_path / engine).set_index("cell_id").sort_index()
    finally:
        set_engine(None)
    eager, auto = runs["eager"][cols], runs["auto"][cols]
    assert ((eager - auto).abs() < 1e-5).all().all(), (eager, auto)


def test_an_adaptive_cell_that_stops_early_is_recommended_where_it_stopped(tmp_path, cache_dir):
    import json

    from prunelab.decide.analysis import recommend

    spec = tiny_spec(
        methods=("magnitude",),
        allocations=("global",),
        schedules=("adaptive:accuracy:max_drop=0.02",),
        levels=(0.99,),
    )
    run_sweep(spec, tmp_path)
    df = load_results(tmp_path)
    cell = df[df.method == "magnitude"].iloc[0]
    final = json.loads(cell["trajectory"])[-1]
    assert final["phase"] == "final" and cell["achieved_level"] == pytest.approx(
        final["sparsity"], abs=1e-3
    )  # whole weights
    assert cell["achieved_level"] < 0.9  # 99 % breaks a 2-point tolerance on this tiny MLP
    rec = recommend(df, max_drop=0.1)
    assert rec.requested == 0.99
    assert rec.level == pytest.approx(int(cell["achieved_level"] * 1000 + 1e-6) / 1000)
    # the report draws and tabulates the cell where it stopped, not at its ceiling
    from prunelab.report.run import report_run

    paths, _ = report_run(tmp_path, max_drop=10)
    summary = paths.summary.read_text()
    assert f"| {rec.level:g} | magnitude |" in summary and "| 0.99 |" not in summary
    assert not {"curve_requested", "curve_achieved_level"} & set(paths.plots)


def test_store_keeps_artefacts(tmp_path, cache_dir):
    run_sweep(tiny_spec(methods=("magnitude",), allocations=("global",)), tmp_path)
    df = load_results(tmp_path)
    with Store(tmp_path) as store:
        preds = store.artifact(df.cell_id[1], "test_preds")
        labels = store.artifact("__run__", "test_labels")
        assert store.get_meta("data_hash") and "torch" in store.get_meta("env")
    assert preds.shape == labels.shape
    assert abs((preds == labels).mean() - df.accuracy[1]) < 1e-6
    # weight histograms per layer: exact zeros + binned non-zeros = the layer, zeros as stored
    from prunelab.decide.weightstats import WeightHistogram

    with Store(tmp_path) as store:
        names = store.artifact_names(df.cell_id[1], "weight_hist/")
        hists = {
            n.split("/")[1]: WeightHistogram.from_array(store.artifact(df.cell_id[1], n))
            for n in names
        }
    sizes = {"1": 64 * 64, "3": 64 * 32, "5": 32 * 10}  # mlp-tiny on 8x8 digits
    assert {n: int(h.counts.sum()) + h.zeros for n, h in hists.items()} == sizes
    stored = json.loads(df.layer_sparsity[1])
    assert {n: h.zeros / sizes[n] for n, h in hists.items()} == pytest.approx(stored)


def test_sigkill_midway_then_rerun_loses_and_duplicates_nothing(tmp_path, cache_dir):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "prunelab",
        "sweep",
        "--out",
        str(out),
        "--dataset",
        "digits",
        "--model",
        "mlp-tiny",
        "--dense-epochs",
        "2",
        "--ft-epochs",
        "1",
        "--levels",
        "0.1:0.9:0.1",
        "--quiet",
        "--no-report",
    ]
    env = {**os.environ, "PRUNELAB_CACHE": str(cache_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    finished = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (out / "results.sqlite").exists():
            with sqlite3.connect(out / "results.sqlite") as db:
                try:
                    finished = db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                except sqlite3.OperationalError:
                    finished = 0
            if finished >= 3:
                break
    assert proc.poll() is None, "sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = load_results(out).set_index("cell_id")
    assert 3 <= len(survivors) < 37
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{37 - len(survivors)} cells ran, {len(survivors)} resumed" in rerun.stderr
    final = load_results(out).set_index("cell_id")
    assert len(final) == 37 and final.index.is_unique
    with sqlite3.connect(out / "results.sqlite") as db:
        times = dict(db.execute("SELECT cell_id, finished_at FROM cells"))
        kept = {cid: t for cid, t in times.items() if cid in survivors.index}
    assert len(kept) == len(survivors)  # the rows written before the kill were not redone
    assert (final.loc[survivors.index, "accuracy"] == survivors["accuracy"]).all()


def test_dense_training_reports_its_steps_once_and_not_when_cached(tmp_path):
    cell = expand_cells(tiny_spec(dense=TrainConfig(epochs=0.5, batch_size=100)))[0]
    steps: list[tuple[int, int]] = []
    ContextCache(tmp_path, on_step=lambda done, total: steps.append((done, total))).get(cell)
    assert steps == [(i, 6) for i in range(1, 7)]  # 0.5 × ceil(1,197 / 100) = 6 steps
    ContextCache(tmp_path, on_step=lambda done, total: steps.append((done, total))).get(cell)
    assert len(steps) == 6  # the second context loads the cached dense model


def test_finetune_distill_from_toml_recovers_closer_to_the_dense_model(tmp_path, cache_dir):
    """``[finetune] distill`` (the README's TOML key) trains every cell, the dense control
    included, toward the dense model's outputs: at the same budget the pruned cell ends with a
    lower KL to dense than plain cross-entropy recovery gives it."""
    raw = {"model": "mlp-tiny", "data": {"name": "digits"}, "dense": {"epochs": 3},
           "methods": ["magnitude"], "allocations": ["global"], "levels": [0.9],
           "sensitivity_scan": False}  # fmt: skip
    plain = spec_from_dict({**raw, "finetune": {"epochs": 1}})
    distilled = spec_from_dict({**raw, "finetune": {"epochs": 1, "distill": 1.0}})
    assert distilled.finetune.identity()["distill"] == 1.0
    assert "distill" not in plain.finetune.identity()  # ids made before distillation stay valid
    run_sweep(plain, tmp_path / "plain")
    run_sweep(distilled, tmp_path / "distilled")
    a, b = (load_results(tmp_path / r).set_index("method") for r in ("plain", "distilled"))
    assert b.loc["magnitude", "kl"] < a.loc["magnitude", "kl"]
    assert b.loc["dense", "kl"] < a.loc["dense", "kl"]  # the control gets the same objective


def test_finetune_precision_bf16_from_toml_trains_in_bfloat16(tmp_path, cache_dir):
    """``[finetune] precision = "bf16"`` (the README's TOML key) recovers every cell under
    bfloat16 autocast: a different cell id and a different (not identical) result than
    float32 (the dense control's too), the same accuracy within two points."""
    raw = {"model": "mlp-tiny", "data": {"name": "digits"}, "dense": {"epochs": 3},
           "methods": ["magnitude"], "allocations": ["global"], "levels": [0.8],
           "sensitivity_scan": False}  # fmt: skip
    fp32 = spec_from_dict({**raw, "finetune": {"epochs": 1}})
    bf16 = spec_from_dict({**raw, "finetune": {"epochs": 1, "precision": "bf16"}})
    assert bf16.finetune.identity()["precision"] == "bf16"
    assert "precision" not in fp32.finetune.identity()  # ids made before it stay valid
    run_sweep(fp32, tmp_path / "fp32")
    run_sweep(bf16, tmp_path / "bf16")
    a, b = (load_results(tmp_path / r).set_index("method") for r in ("fp32", "bf16"))
    assert a.loc["magnitude", "cell_id"] != b.loc["magnitude", "cell_id"]
    for method in ("magnitude", "dense"):  # the dense control recovers in bf16 too
        assert abs(a.loc[method, "accuracy"] - b.loc[method, "accuracy"]) < 0.02
        assert a.loc[method, "kl"] != b.loc[method, "kl"]
