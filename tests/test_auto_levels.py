"""``levels = "auto"``: the search policy on known curves, and real sweeps on a tiny model
(the grid's recommendation with a fraction of its cells; resumed; reported; CLI and TOML)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from prunelab import TrainConfig
from prunelab.cli import app
from prunelab.decide.tipping import Climb, plan_round, record
from prunelab.decide.verdict import judge
from prunelab.errors import PrunelabError
from prunelab.report.run import report_run, run_recommendation, run_records, run_units
from prunelab.sweep import DataSpec, SweepSpec, load_spec, run_sweep, spec_from_dict
from prunelab.sweep.auto import SEARCH_FILE
from prunelab.sweep.spec import LevelSearch, parse_auto
from prunelab.sweep.store import load_results

GRID = LevelSearch().grid()  # 0.05 .. 0.99 in steps of 0.005
LADDER = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.98,)  # the 20-level grid


def search(truths: dict[str, float], grid: tuple[float, ...] = GRID) -> dict[str, Climb]:
    """Run the policy against curves that hold exactly up to ``truths[config]``."""
    climbs = {k: Climb(grid) for k in truths}
    while True:
        climbs, asks = plan_round(climbs)
        if not asks:
            return climbs
        for key, (level, why) in asks.items():
            verdict = "holds" if level <= truths[key] + 1e-9 else "breaks"
            climbs[key] = record(climbs[key], level, verdict, why)


def test_policy_finds_the_last_holding_grid_level_in_few_probes():
    rng = random.Random(0)
    for _ in range(60):
        truth = rng.choice(GRID)
        climb = search({"a": truth})["a"]
        assert climb.best == truth and climb.settled
        assert len(climb.probes) <= 12, [p.level for p in climb.probes]  # vs 189 grid levels
    assert search({"a": 0.01})["a"].best is None  # nothing holds: stops at low
    top = search({"a": 0.995})["a"]
    assert top.best == GRID[-1] and "top of the grid" in top.outcome()


def test_race_stops_a_configuration_that_cannot_beat_the_leader():
    climbs = search({"good": 0.9, "bad": 0.3, "close": 0.85})
    assert climbs["good"].best == 0.9 and not climbs["good"].stopped
    bad = climbs["bad"]
    assert [p.level for p in bad.probes] == [0.5] and "cannot beat" in bad.stopped
    close = climbs["close"]  # waits while the leader climbs, then fails at its level: out
    assert [p.level for p in close.probes] == [0.5, 0.9] and close.best == 0.5
    assert close.probes[1].why == "race: can it reach the leader's 0.9?"
    assert close.stopped == "race: fails at 0.9, cannot beat the leader's 0.9"
    climbs = search({"a": 0.6, "b": 0.9})  # the one that climbs first need not win:
    assert climbs["a"].best == 0.6 and climbs["a"].settled  # a settles, then b climbs past it
    assert climbs["b"].best == 0.9 and climbs["b"].probes[1].level == 0.6


def test_verdicts_and_auto_forms():
    assert judge(0.0, 0.005, 0.005) == "holds"  # exactly the tolerance holds
    assert judge(0.006, 0.02, 0.005) == "breaks" and judge(0.0, 0.02, 0.005) == "undecided"
    assert parse_auto("auto") == LevelSearch()
    assert parse_auto("auto:0.3:0.95") == LevelSearch(0.3, 0.95)
    assert parse_auto("AUTO:0.3:0.9:0.1", 0.5).grid() == (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_auto("0.5,0.9") is None
    for bad, msg in (
        ("auto:0.9:0.3", "0 < low < high < 1"),
        ("auto:0.3", "auto:low:high"),
        ("auto:a:b", "cannot parse"),
        ("auto:0.3:0.9:0", "resolution"),
    ):
        with pytest.raises(PrunelabError, match=msg):
            parse_auto(bad)
    with pytest.raises(PrunelabError, match="tolerance of levels = 'auto'"):
        spec_from_dict({"levels": [0.5, 0.9], "max_drop": 1.0})
    assert spec_from_dict({"levels": "auto"}).search.early_stop  # on by default
    assert not spec_from_dict({"levels": "auto", "early_stop": False}).search.early_stop
    with pytest.raises(PrunelabError, match="early_stop = false applies to levels = 'auto'"):
        spec_from_dict({"levels": [0.5], "early_stop": False})


def test_toml_form_as_the_readme_writes_it(tmp_path):
    (tmp_path / "auto.toml").write_text(
        'model = "mlp-tiny"\nlevels = "auto:0.3:0.99:0.005"\nmax_drop = 1.0\nearly_stop = true\n'
        '[data]\nname = "digits"\n'
    )
    spec = spec_from_dict(load_spec(tmp_path / "auto.toml"))
    assert spec.search == LevelSearch(0.3, 0.99, 0.005, 1.0)
    assert spec_from_dict(spec.to_dict()).search == spec.search  # stored spec reads back
    assert "search" not in SweepSpec().to_dict()  # ladder runs keep their stored spec


def tiny(**kw) -> SweepSpec:
    return SweepSpec(
        model="mlp-tiny",
        data=DataSpec(name="digits"),
        dense=TrainConfig(epochs=15, lr=3e-3, batch_size=64),  # ~95 % val accuracy
        finetune=TrainConfig(epochs=0),
        methods=("magnitude", "random"),
        allocations=("global",),
        sensitivity_scan=False,
        **kw,
    )


# 10 points. The paired rule's bounds on digits' 200 validation rows (one seed) are several
# points wide, so at smaller tolerances the answer sits on the flat, noisy part of the curve,
# where the grid stops at its first noisy failure and bisection never probes it (at 5 points:
# grid 0.5, auto 0.625, 2.5 steps apart; a miss stated in issue 26's note). Where the curve
# falls, both find the same fall.
MAX_DROP = 10.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(root / "cache"))
        grid = run_sweep(tiny(levels=LADDER), root / "grid")
        auto = run_sweep(tiny(search=LevelSearch(resolution=0.025, max_drop=MAX_DROP)),
                         root / "auto")  # fmt: skip
        again = run_sweep(tiny(search=LevelSearch(resolution=0.025, max_drop=MAX_DROP)),
                          root / "auto")  # fmt: skip
        yield grid, auto, again


def recommendation(run_dir):  # as `prunelab recommend` decides: with the per-example records
    df = load_results(run_dir)
    return run_recommendation(df, run_units(run_dir), max_drop=MAX_DROP,
                              records=run_records(run_dir, df))  # fmt: skip


def test_auto_recommends_the_grids_level_with_at_most_half_its_cells(runs):
    grid, auto, _ = runs
    g, a = recommendation(grid.run_dir), recommendation(auto.run_dir)
    assert g.level is not None and a.level is not None
    assert abs(a.level - g.level) <= 0.05 + 1e-9, (g.level, a.level)  # one grid step
    assert a.config == g.config
    assert auto.total <= grid.total / 2, (auto.total, grid.total)
    record = json.loads((auto.run_dir / SEARCH_FILE).read_text())
    best = max(c["best"] or 0 for c in record["configs"])
    assert best == a.level  # the search's floor is what the recommendation reads


def test_searched_cells_stop_early_only_where_a_slice_shows_they_break(runs):
    """Random pruning at 0.5 is far past a 10-point tolerance on this model: its cell stops on a
    quarter of the 200 validation rows; the search and the stated rule read it as broken; every
    other searched cell measured all rows, and the grid's cells never stop early."""
    grid, auto, _ = runs
    df = load_results(auto.run_dir)
    pruned = df[df["method"] != "dense"]
    stopped = pruned[pruned["val_stop"] == "breaks"]
    assert len(stopped) >= 1 and (stopped["val_rows"] == 50).all(), stopped[["method", "level"]]
    assert (pruned.loc[pruned["val_stop"] == "", "val_rows"] == 200).all()
    record = json.loads((auto.run_dir / SEARCH_FILE).read_text())
    verdicts = {(c["method"], p["level"]): p["verdict"]
                for c in record["configs"] for p in c["probes"]}  # fmt: skip
    assert all(verdicts[(r.method, r.level)] == "breaks" for r in stopped.itertuples())
    assert "val_stop" not in load_results(grid.run_dir).columns


def test_resumed_auto_sweep_asks_the_same_levels_and_finds_them_stored(runs):
    _, auto, again = runs
    assert again.ran == 0 and again.total == auto.total


def test_report_shows_what_the_search_did(runs):
    _, auto, _ = runs
    paths, rec = report_run(auto.run_dir)  # the search's tolerance is the default
    assert rec is not None and rec.tolerance.startswith(f"max drop {MAX_DROP:g} points")
    html, summary = paths.html.read_text(), paths.summary.read_text()
    assert "Level search (levels = auto)" in html and "bracket: start at 0.5" in html
    assert "cannot beat the leader" in summary  # random is raced out
    levels = sorted(load_results(auto.run_dir).query("method == 'magnitude'")["level"])
    assert len(levels) >= 3 and set(levels) <= set(LevelSearch(resolution=0.025).grid())


def test_cli_levels_auto_as_the_readme_writes_it(tmp_path, cache_dir):
    out = tmp_path / "run"
    args = ["sweep", "--model", "mlp-tiny", "--dataset", "digits", "--dense-epochs", "3",
            "--ft-epochs", "0", "--methods", "magnitude", "--allocations", "global", "--quiet",
            "--levels", "auto:0.3:0.95:0.05", "--max-drop", "5", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / SEARCH_FILE).is_file() and "Level search" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "b"), "--levels", "auto:0.9:0.2"])
    assert bad.exit_code == 2 and "error: auto levels need 0 < low < high < 1" in bad.output


def test_python_api_levels_auto_as_the_readme_writes_it(trained_tiny, digits, tmp_path, cache_dir):
    import prunelab

    data = {k: (getattr(digits, k).x, getattr(digits, k).y) for k in ("train", "val", "test")}
    result = prunelab.sweep(trained_tiny, **data, levels="auto:0.3:0.95:0.05", max_drop=5,
                            finetune=TrainConfig(epochs=0), out=tmp_path / "nb")  # fmt: skip
    record = json.loads((tmp_path / "nb" / SEARCH_FILE).read_text())
    assert result.recommend().level == record["configs"][0]["best"] is not None
    assert record["max_drop"] == pytest.approx(0.05)  # 5 points, in accuracy units
    with pytest.raises(PrunelabError, match="tolerance of levels='auto'"):
        prunelab.sweep(trained_tiny, **data, levels=[0.5], max_drop=5, out=tmp_path / "x")
