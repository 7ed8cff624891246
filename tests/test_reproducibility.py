"""Reproducibility: runs record what made them; the same command twice gives the same numbers;
the ladder score cache changes no result."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import pytest
from typer.testing import CliRunner

from prunelab import load_dataset
from prunelab.cli import app
from prunelab.sweep import Context, DataSpec, SweepSpec, expand_cells, run_cell
from prunelab.sweep.ladder import score_entries
from prunelab.sweep.store import Store, drop_measured, is_measured, load_results
from prunelab.training import TrainConfig

runner = CliRunner()


ARGS = [
    "--model",
    "mlp-tiny",
    "--dataset",
    "digits",
    "--methods",
    "magnitude,random,taylor",
    "--allocations",
    "global",
    "--levels",
    "0.5,0.9",
    "--seeds",
    "0,1",
    "--ft-epochs",
    "0.25",
    "--dense-epochs",
    "1",
    "--no-report",
    "-q",
]


def test_same_command_twice_gives_identical_metrics(tmp_path):
    env = {"PRUNELAB_CACHE": str(tmp_path / "cache")}
    for name in ("a", "b"):
        res = runner.invoke(app, ["sweep", "--out", str(tmp_path / name), *ARGS], env=env)
        assert res.exit_code == 0, res.output
    a, b = (load_results(tmp_path / n).pipe(drop_measured) for n in ("a", "b"))
    a, b = (df[sorted(df.columns)].sort_values("cell_id").reset_index(drop=True) for df in (a, b))
    assert len(a) == 2 + 3 * 2 * 2
    assert a.equals(b), a.compare(b)
    with Store(tmp_path / "a") as store:
        spec = store.get_meta("spec")
        env_meta = store.get_meta("env")
        assert spec["seeds"] == [0, 1] and spec["data"]["seed"] == 0
        assert spec["methods"] == ["magnitude", "random", "taylor"]
        assert {"torch", "numpy", "python", "torch_threads"} <= set(env_meta)
        assert store.get_meta("data_hash") == load_dataset("digits").fingerprint()


@pytest.fixture(scope="module")
def ladder_cells(tmp_path_factory):
    spec = SweepSpec(
        model="mlp-tiny",
        data=DataSpec(name="digits"),
        methods=("random", "taylor", "wanda"),
        allocations=("global", "uniform"),
        levels=(0.3, 0.6, 0.9),
        dense=TrainConfig(epochs=1),
        finetune=TrainConfig(epochs=0.25),
    )
    cells = [c for c in expand_cells(spec) if c.method != "dense"]
    ctx = Context.build(cells[0], tmp_path_factory.mktemp("cache"))
    return cells, ctx


def test_score_cache_changes_no_result(ladder_cells):
    """Scores once per (method, seed) and the generator state restored: bit-identical rows."""
    cells, ctx = ladder_cells
    ctx.memo.clear()
    cached = [run_cell(c, ctx).row for c in cells]
    assert score_entries(ctx.memo) == 3  # one score set per method, shared by 6 cells each
    uncached = [run_cell(c, dataclasses.replace(ctx, memo={})).row for c in cells]

    def model_only(rows: list[dict]) -> list[dict]:  # machine measurements differ per run
        return [{k: v for k, v in r.items() if not is_measured(k)} for r in rows]

    assert model_only(cached) == model_only(uncached)


def test_score_cache_masks_nest_across_levels(ladder_cells):
    cells, ctx = ladder_cells
    from prunelab.prune.apply import get_masks

    ladder = [c for c in cells if c.method == "taylor" and c.allocation == "global"]
    masks = [get_masks(run_cell(c, ctx, keep_model=True).model) for c in ladder]
    for low, high in pairwise(masks):
        for name in low:
            assert not (high[name] & ~low[name]).any()  # kept at a higher level => kept below
