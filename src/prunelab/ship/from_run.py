"""Export one cell of a finished sweep: re-run the cell (it is deterministic), check the
recomputed metrics equal the stored row, then write the model as sparse, slim or ONNX.

The check is a free reproducibility test: an export never ships a model that is not the one
the report describes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sweep.cell import Cell, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.store import Store, is_measured

REL_TOL = 1e-6  # thread counts may differ between the sweep's workers and the export process


def find_cell(
    store: Store,
    cell_id: str | None,
    level: float | None,
    method: str | None,
    allocation: str | None,
    seed: int | None = None,
) -> tuple[str, Cell, dict[str, Any]]:
    """The one stored cell matching ``cell_id`` or (level, method[, allocation][, seed])."""
    rows = store._read("SELECT cell_id, cell, row FROM cells")
    if cell_id is None and (level is None or method is None):
        raise PrunelabError("name the cell: --cell CELL_ID, or --level L --method M")
    hits = []
    for cid, cell_json, row_json in rows:
        row = json.loads(row_json)
        if cell_id is not None:
            ok = cid == cell_id
        else:
            ok = (
                math.isclose(row["level"], level, abs_tol=1e-9)
                and row["method"] == method
                and (allocation is None or row["allocation"] == allocation)
                and (seed is None or row["seed"] == seed)
            )
        if ok:
            hits.append((cid, Cell.from_json(json.loads(cell_json)), row))
    if not hits:
        raise PrunelabError(f"no finished cell in {store.run_dir} matches the selection")
    if len(hits) > 1:
        labels = "; ".join(f"{cid} ({c.label})" for cid, c, _ in hits[:6])
        raise PrunelabError(
            f"{len(hits)} cells match; pick one with --cell, --allocation or --seed: {labels}"
        )
    cid, cell, row = hits[0]
    if cell.cell_id != cid:
        raise PrunelabError(f"cell {cid} hashes to {cell.cell_id} in this prunelab version")
    return hits[0]


def compare_rows(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
    """Keys whose recomputed value differs from the stored one (floats to ``REL_TOL``;
    measured times and memory are not compared)."""
    bad = []
    for key, old in stored.items():
        if is_measured(key):
            continue  # times and memory vary from run to run; nothing to reproduce
        new = fresh.get(key)
        if isinstance(old, float) and isinstance(new, (int, float)):
            same = (math.isnan(old) and math.isnan(new)) or math.isclose(
                old, new, rel_tol=REL_TOL, abs_tol=1e-9
            )
        else:
            same = old == new
        if not same:
            bad.append(f"{key}: stored {old!r}, recomputed {new!r}")
    return bad


def export_cell(
    run_dir: Path,
    out: Path,
    fmt: str,
    cell_id: str | None = None,
    level: float | None = None,
    method: str | None = None,
    allocation: str | None = None,
    cache_dir: Path | None = None,
    overwrite: bool = False,
    seed: int | None = None,
) -> Exported:
    """Re-run a stored cell, verify its metrics, and export its model in ``fmt``."""
    write = FORMATS.get(fmt)  # an unknown format fails here, naming the valid ones
    if out.exists() and not overwrite:
        raise PrunelabError(f"{out} exists; choose another --out (files are never overwritten)")
    with Store(run_dir, create=False) as store:
        cid, cell, stored = find_cell(store, cell_id, level, method, allocation, seed)
        engine = (store.get_meta("env") or {}).get("engine", "auto")
    ctx = Context.build(cell, cache_dir)
    with inference.using_engine(engine):  # evaluate as the sweep did, so metrics can match
        result = run_cell(cell, ctx, keep_model=True)
    diff = compare_rows(stored, result.row)
    if diff:
        raise PrunelabError(f"cell {cid} does not reproduce ({'; '.join(diff[:3])}); not exporting")
    model = result.model
    assert model is not None
    job = ExportJob(
        model,
        ctx.task.example_input(ctx.data.test, 64),  # example inputs of the task's dtype
        cell.structure,
        cell.model,
        getattr(ctx.data, "input_shape", None),
        getattr(ctx.data, "num_classes", None),
        ctx.dense,
    )
    return write(job, out)
