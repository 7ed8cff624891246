"""Results persisted per cell in an embedded SQLite database, so sweeps resume after a crash.

Each finished cell is one transaction (its row and its artefacts together): a killed sweep
loses at most the cells still running, and never leaves half a row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunelab.decide.reference import RunRecords
from prunelab.errors import PrunelabError
from prunelab.tasks.base import ORIGINAL_RECORDS, RECORDS

DB_NAME = "results.sqlite"
RUN_ID = "__run__"  # artefacts that belong to the whole run (e.g. test labels)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells(
    cell_id TEXT PRIMARY KEY, cell TEXT NOT NULL, row TEXT NOT NULL,
    finished_at REAL NOT NULL, duration_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts(
    cell_id TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY(cell_id, name));
"""


_PUT_ARTIFACT = "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)"


def _artifact_row(cell_id: str, name: str, arr: np.ndarray) -> tuple:
    """(cell_id, name, dtype, shape JSON, raw bytes): how a numpy array is stored."""
    blob = np.ascontiguousarray(arr).tobytes()
    return (cell_id, name, str(arr.dtype), json.dumps(list(arr.shape)), blob)


class Store:
    """A run's results database. Open with ``Store(run_dir)``; safe to reopen after a crash.

    >>> import tempfile
    >>> s = Store(Path(tempfile.mkdtemp()))
    >>> s.put_cell("abc", {"level": 0.5}, {"accuracy": 0.9}, 1.0)
    >>> s.finished_ids()
    {'abc'}
    """

    def __init__(self, run_dir: Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not self.path.exists() and not create:
            raise PrunelabError(f"no results in {self.run_dir} (missing {DB_NAME})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise PrunelabError(f"corrupt results store {self.path}: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta -----------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(row[0][0]) if row else default

    def meta_keys(self, prefix: str = "") -> list[str]:
        rows = self._read("SELECT key FROM meta WHERE key LIKE ? ORDER BY key", (prefix + "%",))
        return [r[0] for r in rows]

    # --- cells ----------------------------------------------------------------------------
    def put_cell(
        self,
        cell_id: str,
        cell: dict[str, Any],
        row: dict[str, Any],
        duration_s: float,
        artifacts: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write one finished cell and its artefacts atomically (replacing an earlier copy)."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?)",
                    (cell_id, json.dumps(cell), json.dumps(row), time.time(), duration_s),
                )
                for name, arr in (artifacts or {}).items():
                    self._db.execute(_PUT_ARTIFACT, _artifact_row(cell_id, name, arr))
        except sqlite3.OperationalError as e:
            raise PrunelabError(f"cannot write results to {self.path}: {e}") from None

    def put_artifact(self, cell_id: str, name: str, arr: np.ndarray) -> None:
        self._write(_PUT_ARTIFACT, _artifact_row(cell_id, name, arr))

    def finished_ids(self) -> set[str]:
        return {r[0] for r in self._read("SELECT cell_id FROM cells")}

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for cell_id, row, duration in self._read(
            "SELECT cell_id, row, duration_s FROM cells ORDER BY finished_at"
        ):
            out.append({"cell_id": cell_id, **json.loads(row), "duration_s": duration})
        return out

    def cells(self) -> list[tuple[str, dict[str, Any], dict[str, Any], float, float]]:
        """Every finished cell as ``(cell_id, cell, row, duration_s, finished_at)``, in the
        order they finished."""
        rows = self._read(
            "SELECT cell_id, cell, row, duration_s, finished_at FROM cells ORDER BY finished_at"
        )
        return [(c, json.loads(cell), json.loads(row), d, t) for c, cell, row, d, t in rows]

    def artifact(self, cell_id: str, name: str) -> np.ndarray:
        got = self._read(
            "SELECT dtype, shape, data FROM artifacts WHERE cell_id = ? AND name = ?",
            (cell_id, name),
        )
        if not got:
            raise PrunelabError(f"no artefact '{name}' for cell {cell_id} in {self.path}")
        dtype, shape, data = got[0]
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()

    def artifact_names(self, cell_id: str, prefix: str = "") -> list[str]:
        """Names of a cell's stored artefacts that start with ``prefix``, sorted."""
        rows = self._read(
            "SELECT name FROM artifacts WHERE cell_id = ? AND substr(name, 1, ?) = ? ORDER BY name",
            (cell_id, len(prefix), prefix),
        )
        return [r[0] for r in rows]

    def run_records(self, df: pd.DataFrame | None = None) -> RunRecords:
        """The per-example validation records of the cells of ``df`` (every finished cell by
        default) and the original model's, stored by each dense control, with its metrics."""
        ids = list(df["cell_id"]) if df is not None else [r["cell_id"] for r in self.rows()]

        def by_cell(prefix: str) -> dict[str, dict[str, np.ndarray]]:
            out = {}
            for cid in ids:
                names = self.artifact_names(cid, prefix)
                if names:
                    out[cid] = {n.removeprefix(prefix): self.artifact(cid, n) for n in names}
            return out

        return RunRecords(by_cell(RECORDS), by_cell(ORIGINAL_RECORDS),
                          self.get_meta("dense_metrics") or {})  # fmt: skip

    # --- plumbing ---------------------------------------------------------------------------
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise PrunelabError(f"corrupt results store {self.path}: {e}") from None

    def _write(self, sql: str, args: tuple) -> None:
        try:
            with self._db:
                self._db.execute(sql, args)
        except sqlite3.DatabaseError as e:
            raise PrunelabError(f"cannot write results to {self.path}: {e}") from None


def load_results(run_dir: Path | str):  # -> pandas.DataFrame
    """All finished cells of a run as a pandas DataFrame, one row per cell.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); Store(d).put_cell("c1", {}, {"level": 0.5}, 2.0)
    >>> load_results(d)[["cell_id", "level"]].values.tolist()
    [['c1', 0.5]]
    """

    with Store(Path(run_dir), create=False) as store:
        return pd.DataFrame(store.rows())


def load_artifact(run_dir: Path | str, cell_id: str, name: str) -> np.ndarray:
    """One stored numpy artefact of a cell (e.g. ``test_preds``)."""
    with Store(Path(run_dir), create=False) as store:
        return store.artifact(cell_id, name)


#: Row columns that are measurements of the machine (times, memory), not of the model: they
#: differ between two runs of the same cell and are never compared for reproducibility.
MEASURED_PREFIXES = (
    "duration_s",
    "latency_",
    "dense_latency_",
    "speedup_",
    "fps_",
    "prune_s",
    "peak_rss_",
)


def is_measured(column: str) -> bool:
    """True for a machine measurement column (see :data:`MEASURED_PREFIXES`).

    >>> is_measured("latency_b1_ms"), is_measured("accuracy")
    (True, False)
    """
    return column.startswith(MEASURED_PREFIXES)


def drop_measured(df):  # pandas.DataFrame -> pandas.DataFrame
    """``df`` without its machine-measurement columns (for comparing two runs' results)."""
    return df.drop(columns=[c for c in df.columns if is_measured(c)])
