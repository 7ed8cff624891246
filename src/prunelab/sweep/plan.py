"""From a sweep spec to its cells: every combination, each parsed once into a typed cell.

Dense controls come first (one per seed: the model fine-tuned with the same budget as every
pruned cell). A structure that fixes its level (N:M) runs that one level, and one cell per
configuration when it ignores the allocation.
"""

from __future__ import annotations

import dataclasses

from prunelab.prune.structures import parse_structure
from prunelab.recover.schedules import parse_schedule
from prunelab.sources import resolve
from prunelab.sources.hashing import content_key
from prunelab.sweep.cell import Cell
from prunelab.sweep.spec import SweepSpec
from prunelab.tasks import TASKS


def expand_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of a sweep, dense controls first."""
    common = {
        "model": spec.model,
        "data": spec.data,
        "dense": spec.dense,
        "finetune": spec.finetune,
        "metrics": spec.metrics,
        "calibration_batches": spec.calibration_batches,
        "prune_last": spec.prune_last,
        "include": spec.include or TASKS.get(spec.task.kind).default_include,
        "exclude": spec.exclude,
        "search_trials": spec.search_trials,
        "weights": spec.weights,
        "train_dense": spec.train_dense,
        "task": spec.task,
        "source": source_hash(spec),
    }
    dense = {"method": "dense", "allocation": "-", "structure": None, "schedule": None}
    cells = [Cell(**dense, level=0.0, seed=seed, **common) for seed in spec.seeds]
    schedules = list(dict.fromkeys(parse_schedule(s) for s in spec.schedules))
    for st in (parse_structure(s) for s in spec.structures):
        allocations = spec.allocations if st.uses_allocation else spec.allocations[:1]
        for schedule in schedules:
            for method in spec.methods:
                for allocation in allocations:
                    for level in st.levels(spec.levels):
                        for seed in spec.seeds:
                            cells.append(
                                Cell(
                                    method=method,
                                    allocation=allocation,
                                    structure=st,
                                    schedule=schedule,
                                    level=level,
                                    seed=seed,
                                    **common,
                                )
                            )
    if spec.folds:  # every cell once per fold: replicates are folds x seeds
        cells = [
            dataclasses.replace(c, folds=spec.folds, fold=f)
            for c in cells
            for f in range(spec.folds)
        ]
    return cells


def source_hash(spec: SweepSpec) -> str:
    """One hash of the user's code, weights and data-loader files ('' for built-ins only)."""
    prints = resolve.fingerprint(
        spec.model, spec.weights, spec.data.loader, spec.task.code_paths()
    )
    return content_key(prints) if prints else ""
