"""The CLI through Typer's test runner: real sweeps on digits, and one-line errors (exit 2)."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
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


def test_sweep_writes_results_plots_and_report(run_dir):
    df = load_results(run_dir)
    assert len(df) == 1 + 2 * 2 * 2
    pruned = df[df.method != "dense"]
    assert (pruned.sparsity - pruned.level).abs().max() < 1e-3
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "summary.md").read_text().count("|") > 10
    assert (run_dir / "plots" / "curve_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    mag = pruned[(pruned.method == "magnitude") & (pruned.allocation == "global")]
    rnd = pruned[(pruned.method == "random") & (pruned.allocation == "global")]
    assert mag.set_index("level").accuracy[0.9] > rnd.set_index("level").accuracy[0.9]


def test_rerun_resumes_without_redoing(run_dir):
    before = load_results(run_dir).set_index("cell_id")
    result = invoke("sweep", "--out", str(run_dir), "--levels", "0.5,0.9", *TINY)
    assert result.exit_code == 0, result.output
    assert "0 cells ran, 9 resumed" in result.output
    after = load_results(run_dir).set_index("cell_id")
    assert after.index.equals(before.index)


def test_report_command_rebuilds(run_dir):
    (run_dir / "report.html").unlink()
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").exists()


def test_list_shows_every_registry():
    result = invoke("list")
    assert result.exit_code == 0
    for kind in ("methods", "allocations", "metrics", "datasets", "models"):
        assert f"{kind}:" in result.output
    assert "magnitude" in result.output and "fashion-mnist" in result.output


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


def test_recommend_prints_level_and_evidence(run_dir):
    result = invoke("recommend", str(run_dir), "--max-drop", "60")
    assert result.exit_code == 0, result.output
    assert "Ship sparsity 0.9" in result.output  # every level holds a 60-point tolerance
    assert "holds" in result.output and "magnitude" in result.output


def test_recommend_reports_when_no_level_holds(run_dir):
    result = invoke("recommend", str(run_dir), "--min-value", "0.999")
    assert result.exit_code == 1
    assert "No level meets the tolerance" in result.output


def test_recommend_needs_exactly_one_tolerance(run_dir):
    result = invoke("recommend", str(run_dir))
    assert result.exit_code == 2 and "exactly one of --max-drop" in result.output


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
