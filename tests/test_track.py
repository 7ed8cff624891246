"""Experiment tracking: a tracked sweep read back with MLflow's own client.

One real 3-cell sweep is stopped after two cells (as a kill would stop it), resumed through the
CLI with ``track = "mlflow"`` in its TOML, and run once more with ``--track mlflow``: MLflow must
then hold one finished run per cell with the cell's params and the stored row's metrics, and
the resumes must have added no duplicates.
"""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.sweep import load_spec, run_sweep, spec_from_dict
from prunelab.sweep.store import Store
from prunelab.track import TrackSpec, track_options, tracking
from prunelab.track.base import metrics_of, params_of

mlflow = pytest.importorskip("mlflow", reason="the 'track' extra (scripts/setup.sh installs it)")
from mlflow.tracking import MlflowClient  # noqa: E402

TOML = """
model = "mlp-tiny"
methods = ["magnitude"]
allocations = ["global"]
levels = [0.5, 0.9]
sensitivity_scan = false
track = "mlflow"
[data]
name = "digits"
[dense]
epochs = 3
[finetune]
epochs = 0.5
"""


class Stop(Exception):
    """What a killed process leaves: the cells stored so far, nothing after."""


def _children(client: MlflowClient, parent: str) -> list:
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "sweep.toml"
    cfg.write_text(TOML)
    out = tmp_path_factory.mktemp("run") / "r"
    client = MlflowClient(f"sqlite:///{out.resolve()}/mlruns.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        raw, track = track_options(load_spec(cfg))
        done: list[str] = []

        def stop_after_two(cell, result) -> None:
            done.append(cell.cell_id)
            if len(done) == 2:
                raise Stop

        with pytest.raises(Stop), tracking(track, out) as tracker:
            run_sweep(spec_from_dict(raw), out, on_cell=stop_after_two, tracker=tracker)
        with Store(out, create=False) as store:
            sweep_id = store.get_meta("sweep_id")
        exp = client.get_experiment_by_name("prunelab").experiment_id
        (stopped,) = client.search_runs([exp], f"tags.`prunelab.sweep_id` = '{sweep_id}'")
        assert stopped.info.status == "KILLED"
        parent = stopped.info.run_id
        before = {r.data.tags["prunelab.cell_id"]: r.info.run_id for r in _children(client, parent)}
        # a cell half logged when the process died: unfinished, so logged again on resume
        client.create_run(exp, tags={"mlflow.parentRunId": parent, "prunelab.cell_id": "x"})
        runner = CliRunner()
        resumed = runner.invoke(app, ["sweep", "--config", str(cfg), "--out", str(out), "-q"])
        again = runner.invoke(
            app, ["sweep", "--config", str(cfg), "--out", str(out), "-q", "--track", "mlflow"]
        )
    assert resumed.exit_code == 0, resumed.output
    assert again.exit_code == 0, again.output
    return {"out": out, "cfg": cfg, "client": client, "parent": parent, "before": before,
            "resumed": resumed.output, "again": again.output}  # fmt: skip


def test_one_finished_run_per_cell_with_its_params_and_metrics(tracked):
    out, client, parent = tracked["out"], tracked["client"], tracked["parent"]
    with Store(out, create=False) as store:
        cells = {cid: (raw, row) for cid, raw, row, _, _ in store.cells()}
    runs = _children(client, parent)
    assert len(cells) == 3 and len(runs) == 3
    assert {r.data.tags["prunelab.cell_id"] for r in runs} == set(cells)
    for run in runs:
        raw, row = cells[run.data.tags["prunelab.cell_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.params == params_of(raw)
        assert run.data.params["method"] == raw["method"]
        assert run.data.params["finetune.epochs"] == "0.5"
        assert run.data.metrics == pytest.approx(metrics_of(row))
        assert run.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        layers = json.loads(row["layer_sparsity"])
        assert layers and all(
            run.data.metrics[f"layer_sparsity/{name}"] == pytest.approx(v)
            for name, v in layers.items()
        )


def test_resumes_add_no_duplicates_and_keep_the_runs_logged_before(tracked):
    client, parent, before = tracked["client"], tracked["parent"], tracked["before"]
    resumed, again = tracked["resumed"], tracked["again"]
    assert len(before) == 2  # logged as they finished, before the stop
    assert "1 cells ran, 2 resumed" in resumed and "0 cells ran, 3 resumed" in again
    now = {r.data.tags["prunelab.cell_id"]: r.info.run_id for r in _children(client, parent)}
    assert "x" not in now  # the half-logged run is gone
    assert {k: now[k] for k in before} == before  # the same runs, not logged twice
    exp = client.get_run(parent).info.experiment_id
    parents = client.search_runs([exp], "tags.`prunelab.sweep_id` != ''")
    assert [p.info.run_id for p in parents] == [parent]  # one sweep run, reused


def test_the_sweep_run_holds_the_original_model_spec_and_report(tracked):
    out, client, parent = tracked["out"], tracked["client"], tracked["parent"]
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    with Store(out, create=False) as store:
        original = store.get_meta("dense_metrics")
        spec = store.get_meta("spec")
    assert run.data.metrics["original/accuracy"] == pytest.approx(original["accuracy"])
    assert run.data.params["levels"] == "[0.5, 0.9]" and run.data.params["model"] == "mlp-tiny"
    names = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/summary.md", "report/plots"} <= names
    html = client.download_artifacts(parent, "report/report.html", str(out / "dl"))
    assert open(html).read() == (out / "report.html").read_text()
    assert json.loads(open(client.download_artifacts(parent, "spec.json", str(out))).read()) == spec


def test_another_store_gets_every_finished_cell_once(tracked, tmp_path):
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    args = ["sweep", "--config", str(tracked["cfg"]), "--out", str(tracked["out"]), "-q",
            "--no-report", "--track", "mlflow", "--track-uri", uri]  # fmt: skip
    for _ in range(2):  # the finished run logged to a second store, then resumed there
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "0 cells ran, 3 resumed" in result.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("prunelab")
    runs = client.search_runs([exp.experiment_id], "tags.`prunelab.cell_id` != ''")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the database


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--track", "wandb"], "unknown tracker 'wandb'; valid: mlflow"),
        (["--track-uri", "sqlite:///x.db"], "a tracking URI needs a tracker"),
    ],
)
def test_bad_tracking_flags_are_one_line(tmp_path, flags, message):
    result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "r"), *flags])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_mlflow_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(PrunelabError, match=r"pip install 'prunelab\[track\]'"):
        TrackSpec("mlflow").open(tmp_path)
    result = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path / "r"), "--track", "mlflow", "--model", "mlp-tiny"]
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work
