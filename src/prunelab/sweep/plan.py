"""From a sweep spec to its cells: every combination, each parsed once into a typed cell.

Dense controls come first (one per seed: the model fine-tuned with the same budget as every
pruned cell). A structure that fixes its level (N:M) runs that one level, and one cell per
configuration when it ignores the allocation; one that scores by itself (decoder heads, FFN
neurons, blocks) runs once per level under its own method name.
"""

from __future__ import annotations

import dataclasses

from prunelab.decide.sequential import EarlyStop
from prunelab.prune.structures import parse_structure
from prunelab.recover.schedules import parse_schedule
from prunelab.sources import resolve
from prunelab.sources.hashing import content_key
from prunelab.sweep.cell import Cell
from prunelab.sweep.model_aware import MODEL_AWARE
from prunelab.sweep.spec import Reconstruction, SweepSpec
from prunelab.tasks import TASKS

Config = tuple  # (structure, schedule, method, allocation): one curve of the sweep


def configurations(spec: SweepSpec) -> list[Config]:
    """Every (structure, schedule, method, allocation) the sweep prunes with, in plan order."""
    out = []
    schedules = list(dict.fromkeys(parse_schedule(s) for s in spec.schedules))
    for st in (parse_structure(s) for s in spec.structures):
        allocations = spec.allocations if st.uses_allocation else spec.allocations[:1]
        for schedule in schedules:
            for method in (st.own_method,) if st.own_method else spec.methods:
                for allocation in allocations:
                    out.append((st, schedule, method, allocation))
    return out


def cells_at(
    spec: SweepSpec, config: Config | None, level: float, early_stop: EarlyStop | None = None
) -> list[Cell]:
    """One configuration's cells at one level: every seed (and fold). None: the dense controls.
    ``early_stop``: the cells may stop on a slice of validation (searched levels)."""
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
        "tune_fraction": spec.tune_fraction if tunes_on_validation(spec) else 0.0,
    }
    if config is None:
        how = {"method": "dense", "allocation": "-", "structure": None, "schedule": None}
    else:
        st, schedule, method, allocation = config
        how = {"method": method, "allocation": allocation, "structure": st, "schedule": schedule,
               "reconstruction": reconstruction_of(spec, config)}  # fmt: skip
    cells = [Cell(**how, level=level, seed=seed, early_stop=early_stop, **common)
             for seed in spec.seeds]  # fmt: skip
    if spec.folds:  # every cell once per fold: replicates are folds x seeds
        cells = [dataclasses.replace(c, folds=spec.folds, fold=f) for c in cells
                 for f in range(spec.folds)]  # fmt: skip
    return cells


def reconstruction_of(spec: SweepSpec, config: Config) -> Reconstruction | None:
    """The sweep's [reconstruction] for a configuration whose one-shot cells walk the layers
    with it; None for every other one (their ids stay what they were)."""
    st, schedule, method, _ = config
    one_shot = schedule.name == "oneshot"
    return spec.reconstruction if one_shot and spec.reconstructs(method, st) else None


def expand_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of a sweep, dense controls first.

    With ``levels = "auto"`` (``spec.search``) only the dense controls and the structures that
    fix their level: the searched levels are asked for as the search goes
    (:mod:`prunelab.sweep.auto`).
    """
    cells = cells_at(spec, None, 0.0)
    for config in configurations(spec):
        st = config[0]
        if spec.search is not None and st.fixed_level is None:
            continue
        for level in st.levels(spec.levels):
            cells += cells_at(spec, config, level)
    return cells


def tunes_on_validation(spec: SweepSpec) -> bool:
    """True when an allocation (sensitivity, searched) or a schedule (adaptive) of the sweep
    tunes on validation rows: then they get a tuning slice and the decision the rest."""
    schedules = (parse_schedule(s) for s in spec.schedules)
    return any(a in MODEL_AWARE for a in spec.allocations) or any(
        getattr(s, "tunes_on_validation", False) for s in schedules
    )


def source_hash(spec: SweepSpec) -> str:
    """One hash of the user's code, weights and data-loader files ('' for built-ins only)."""
    prints = resolve.fingerprint(spec.model, spec.weights, spec.data.loader, spec.task.code_paths())
    return content_key(prints) if prints else ""
