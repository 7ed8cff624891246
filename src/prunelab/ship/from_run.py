"""Export one cell of a finished sweep, or the original model, in any registered format.

A cell's model is stored with its results (:mod:`prunelab.sweep.snapshot`): export rebuilds it
from the dense model and checks the rebuilt state bit for bit against the stored digest, so it
ships exactly the model the report describes, without re-running the cell. ``check=True`` (CLI
``--check``) re-runs the cell as well (it is deterministic) and refuses when the recomputed
metrics differ from the stored row; runs made before models were stored are always re-run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.prune.apply import plain_state
from prunelab.prune.structures import parse_structure
from prunelab.ship.export import dense_bytes
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sweep.cell import Cell, run_cell
from prunelab.sweep.context import Context, Dense, load_dense
from prunelab.sweep.snapshot import MODEL, describe, rebuild
from prunelab.sweep.store import Store, is_measured

REL_TOL = 1e-6  # thread counts may differ between the sweep's workers and the export process


def find_cell(
    store: Store,
    cell_id: str | None,
    level: float | None,
    method: str | None,
    allocation: str | None,
    seed: int | None = None,
    structure: str | None = None,
) -> tuple[str, Cell, dict[str, Any]]:
    """The one stored cell matching ``cell_id`` or (level, method[, allocation][, seed]
    [, structure])."""
    rows = store._read("SELECT cell_id, cell, row FROM cells")
    if cell_id is None and (level is None or method is None):
        raise PrunelabError("name the cell: --cell CELL_ID, or --level L --method M")
    spelled = None if structure is None else str(parse_structure(structure))
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
                and (spelled is None or row["structure"] == spelled)
            )
        if ok:
            hits.append((cid, Cell.from_json(json.loads(cell_json)), row))
    if not hits:
        raise PrunelabError(f"no finished cell in {store.run_dir} matches the selection")
    if len(hits) > 1:
        labels = "; ".join(f"{cid} ({c.label})" for cid, c, _ in hits[:6])
        raise PrunelabError(
            f"{len(hits)} cells match; pick one with --cell, --structure, --allocation or "
            f"--seed: {labels}"
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


def any_cell(store: Store) -> Cell:
    """A stored cell of the run (every cell names the same model, data and dense model)."""
    rows = store._read("SELECT cell FROM cells ORDER BY finished_at LIMIT 1")
    if not rows:
        raise PrunelabError(f"no finished cell in {store.run_dir}: nothing names its model yet")
    return Cell.from_json(json.loads(rows[0][0]))


def _rerun(cell: Cell, cid: str, stored: dict[str, Any], engine: str,
           cache_dir: Path | None) -> tuple[Any, Dense]:  # fmt: skip
    """Run the cell again and check its metrics reproduce the stored row."""
    ctx = Context.build(cell, cache_dir)
    with inference.using_engine(engine):  # evaluate as the sweep did, so metrics can match
        result = run_cell(cell, ctx, keep_model=True)
    diff = compare_rows(stored, result.row)
    if diff:
        raise PrunelabError(f"cell {cid} does not reproduce ({'; '.join(diff[:3])}); not exporting")
    return result.model, Dense(ctx.data, ctx.task, ctx.dense)


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two models' floating tensors of the same names."""
    sa, sb = plain_state(a), plain_state(b)
    return max(
        (float((sa[k].double() - sb[k].double()).abs().max()) for k in sa
         if sa[k].is_floating_point() and sa[k].numel()),
        default=0.0,
    )  # fmt: skip


def _numel(model: Any) -> int:
    return sum(t.numel() for t in model.state_dict().values())


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
    structure: str | None = None,
    original: bool = False,
    check: bool = False,
) -> Exported:
    """Export a stored cell's model (or, ``original=True``, the dense model as given) in ``fmt``.

    The cell is named by ``cell_id`` or by (level, method[, allocation, seed, structure]). Its
    stored model is rebuilt and checked bit for bit; ``check=True`` also re-runs the cell and
    refuses when its metrics do not reproduce the stored row.
    """
    write = FORMATS.get(fmt)  # an unknown format fails here, naming the valid ones
    if out.exists() and not overwrite:
        raise PrunelabError(f"{out} exists; choose another --out (files are never overwritten)")
    named = (cell_id, level, method, allocation, seed, structure)
    if original and (check or any(v is not None for v in named)):
        raise PrunelabError("--original exports the model as given: it takes no cell selection")
    with Store(run_dir, create=False) as store:
        if original:
            cell, cid, blob = any_cell(store), "", None
        else:
            cid, cell, stored = find_cell(store, cell_id, level, method, allocation, seed,
                                          structure)  # fmt: skip
            names = store.artifact_names(cid, MODEL)
            blob = store.artifact(cid, MODEL) if MODEL in names else None
        engine = (store.get_meta("env") or {}).get("engine", "auto")
    note = ""
    if original:
        base = load_dense(cell, cache_dir)
        model, structure_ = base.model, None
    elif check or blob is None or not describe(blob)["complete"]:
        model, base = _rerun(cell, cid, stored, engine, cache_dir)
        structure_ = cell.structure
        note = "re-ran the cell: its metrics reproduce"
        if blob is not None and describe(blob)["complete"]:
            kept = rebuild(blob, base.model, cell.structure, base.example())
            note += f"; max |stored - re-run| weight {_max_diff(kept, model):.2g}"
            model = kept  # ship the model the report describes
    else:
        base = load_dense(cell, cache_dir)
        model = rebuild(blob, base.model, cell.structure, base.example())
        structure_ = cell.structure
    job = ExportJob(
        model,
        base.example(64),  # example inputs of the task's dtype
        structure_,
        cell.model,
        getattr(base.data, "input_shape", None),
        getattr(base.data, "num_classes", None),
        base.task.sequence_axis,
        base.model,
        getattr(base.data, "tokenizer", None),
    )
    done = write(job, out)
    if _numel(model) != _numel(base.model):  # physically smaller: scale by the model as given
        done = replace(done, dense_bytes=dense_bytes(plain_state(base.model)))
    if note:
        done = replace(done, detail=f"{done.detail}; {note}" if done.detail else note)
    return done
