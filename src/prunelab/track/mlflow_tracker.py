"""MLflow: a sweep is a parent run, each cell a child run (``prunelab sweep --track mlflow``).

The store defaults to ``sqlite:///RUN/mlruns.db`` in the run directory, artifacts beside it in
``RUN/mlartifacts``; ``--track-uri`` points elsewhere (another SQLite file, a team's MLflow
server). The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``prunelab``. A child run is tagged
with its cell id and marked FINISHED only once all of it is logged; a resumed sweep deletes
unfinished children (a killed process's) and logs only the cells its run lacks.

MLflow is the optional extra ``track`` (``pip install 'prunelab[track]'``), imported here
only when a tracker is opened.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.track.base import TRACKERS, TrackedCell, TrackedSweep, metrics_of, params_of

DB_FILE = "mlruns.db"
ARTIFACTS = "mlartifacts"
CELL_TAG = "prunelab.cell_id"
SWEEP_TAG = "prunelab.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM = 6000  # characters of a param value MLflow keeps


def default_uri(run_dir: Path) -> str:
    """The SQLite store in the run directory.

    >>> default_uri(Path("/runs/a"))
    'sqlite:////runs/a/mlruns.db'
    """
    return f"sqlite:///{Path(run_dir).resolve() / DB_FILE}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite file; the server's choice
    otherwise (None).

    >>> artifact_root("sqlite:////runs/a/mlruns.db"), artifact_root("http://mlflow:5000")
    ('file:///runs/a/mlartifacts', None)
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS).as_uri()


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowTracker:
    """One sweep in one MLflow store (see the module docstring)."""

    def __init__(self, uri: str | None, run_dir: Path) -> None:
        try:
            import mlflow  # noqa: F401  (the optional extra)
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise PrunelabError(
                "--track mlflow needs MLflow: pip install 'prunelab[track]' "
                "(scripts/setup.sh installs it)"
            ) from None
        self.uri = uri or default_uri(run_dir)
        self.run_dir = Path(run_dir)
        self.parent: str | None = None
        self.experiment = ""
        self.client = self._call(lambda: MlflowClient(tracking_uri=self.uri))

    def _call(self, fn: Any) -> Any:
        """``fn()``, with MLflow's errors (a bad URI, an unreachable server) as one line."""
        try:
            return fn()
        except PrunelabError:
            raise
        except Exception as e:  # MlflowException, connection and database errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PrunelabError(f"MLflow at {self.uri}: {first}") from None

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "prunelab"
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_root(self.uri))
        if found.lifecycle_stage != "active":
            raise PrunelabError(
                f"MLflow experiment '{name}' at {self.uri} is deleted: restore it, or set "
                "MLFLOW_EXPERIMENT_NAME to another name"
            )
        return found.experiment_id

    def start(self, sweep: TrackedSweep) -> None:
        self._call(lambda: self._start(sweep))

    def _start(self, sweep: TrackedSweep) -> None:
        self.experiment = self._experiment()
        found = self.client.search_runs(
            [self.experiment], f"tags.`{SWEEP_TAG}` = '{sweep.sweep_id}'", max_results=1
        )
        if found:  # a resumed sweep: its run again
            self.parent = found[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
            return
        tags = {
            SWEEP_TAG: sweep.sweep_id,
            "prunelab.run_dir": str(sweep.run_dir.resolve()),
            "prunelab.task": str(sweep.task.get("kind", "")),
            "prunelab.primary": str(sweep.task.get("primary", "")),
        }
        run = self.client.create_run(self.experiment, tags=tags, run_name=sweep.run_dir.name)
        self.parent = run.info.run_id
        original = {f"original/{k}": v for k, v in metrics_of(sweep.original).items()}
        self._log(self.parent, params_of(sweep.spec), original, time.time())
        self.client.log_dict(self.parent, dict(sweep.spec), "spec.json")

    def _children(self) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment], f"tags.`{PARENT_TAG}` = '{self.parent}'", page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def logged(self) -> set[str]:
        def find() -> set[str]:
            done = set()
            for run in self._children():
                if run.info.status == "FINISHED":
                    done.add(run.data.tags.get(CELL_TAG))
                else:  # a cell half logged by a process that was stopped: logged again
                    self.client.delete_run(run.info.run_id)
            return done - {None}

        return self._call(find)

    def log_cell(self, cell: TrackedCell) -> None:
        def log() -> None:
            start = cell.finished_at - cell.duration_s
            tags = {PARENT_TAG: self.parent, CELL_TAG: cell.cell_id}
            run = self.client.create_run(
                self.experiment, int(start * 1000), tags, run_name=cell.label
            )
            rid = run.info.run_id
            self._log(rid, params_of(cell.config), metrics_of(cell.row), cell.finished_at)
            trajectory = cell.row.get("trajectory")
            if isinstance(trajectory, str):  # a scheduled cell's steps
                self.client.log_dict(rid, json.loads(trajectory), "trajectory.json")
            self.client.set_terminated(rid, "FINISHED", int(cell.finished_at * 1000))

        self._call(log)

    def _log(self, run_id: str, params: dict[str, str], metrics: dict[str, float], at: float):
        from mlflow.entities import Metric, Param

        stamp = int(at * 1000)
        ps = [Param(k, v[:MAX_PARAM]) for k, v in params.items()]
        ms = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
        for chunk in _batches(ps, 100):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _batches(ms, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def log_files(self, files: Sequence[Path], folder: str) -> None:
        def log() -> None:
            for f in files:
                self.client.log_artifact(self.parent, str(f), folder)

        self._call(log)

    def close(self, ok: bool) -> None:
        if self.parent is not None:
            status = "FINISHED" if ok else "KILLED"
            self._call(lambda: self.client.set_terminated(self.parent, status))


@TRACKERS.register("mlflow")
def _mlflow(uri: str | None, run_dir: Path) -> MlflowTracker:
    return MlflowTracker(uri, run_dir)
