"""``levels = "auto"``: run the cells the level search asks for, round by round.

Each round, every configuration still in the race names one level
(:func:`prunelab.decide.tipping.plan_round`); their cells (every seed and fold) run together
through the executor, are stored like any cell, and the predicate
(:func:`prunelab.decide.verdict.records_rule`: the recommendation's own rule) judges each. The
search is deterministic given the stored rows, so a resumed sweep asks for the same levels and
finds them stored. Each searched cell may stop on a slice of its validation rows once the
slice shows it clearly breaks (:mod:`prunelab.decide.sequential`). What the search did is
kept in the store (meta ``level_search``) and in ``search.json`` in the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.decide.sequential import EarlyStop
from prunelab.decide.tipping import Climb, plan_round, record
from prunelab.decide.units import Units, tolerance_of
from prunelab.decide.verdict import Predicate, records_rule
from prunelab.errors import PrunelabError
from prunelab.recover.schedules import format_schedule
from prunelab.sweep.cell import Cell
from prunelab.sweep.plan import Config, cells_at, configurations
from prunelab.sweep.spec import SweepSpec
from prunelab.sweep.store import Store

SEARCH_KEY = "level_search"  # store meta: the search's record
SEARCH_FILE = "search.json"
RunCells = Callable[[Sequence[Cell]], None]  # runs and stores the cells it is given


@dataclass(frozen=True)
class SearchOutcome:
    asked: int  # cells the search asked for
    ran: int  # of which not stored yet
    record: dict[str, Any]


def config_name(config: Config) -> dict[str, str]:
    st, schedule, method, allocation = config
    return {"method": method, "allocation": allocation, "structure": str(st),
            "schedule": format_schedule(schedule)}  # fmt: skip


def search_levels(
    spec: SweepSpec, store: Store, run_cells: RunCells, predicate: Predicate | None = None
) -> SearchOutcome:
    """Search every configuration of ``spec`` (``spec.search`` set) for its highest holding
    level; ``run_cells`` runs and stores the cells not yet in ``store``."""
    search = spec.search
    if search is None:
        raise PrunelabError("search_levels needs levels = 'auto'")
    units = Units.from_task(store.get_meta("task") or {})
    metric = units.primary
    max_drop = tolerance_of(units, metric, search.max_drop)
    predicate = predicate or records_rule(store.run_records, metric, max_drop, units)
    early = EarlyStop(metric, max_drop) if search.early_stop else None  # futility stops
    dense_ids = [c.cell_id for c in cells_at(spec, None, 0.0)]
    configs = [c for c in configurations(spec) if c[0].fixed_level is None]
    climbs: dict[Any, Climb] = {i: Climb(search.grid()) for i in range(len(configs))}
    asked = ran = 0
    while True:
        climbs, asks = plan_round(climbs)
        if not asks:
            break
        cells = {i: cells_at(spec, configs[i], level, early) for i, (level, _) in asks.items()}
        done = store.finished_ids()
        pending = [c for cs in cells.values() for c in cs if c.cell_id not in done]
        asked, ran = asked + sum(map(len, cells.values())), ran + len(pending)
        run_cells(pending)
        rows = {r["cell_id"]: r for r in store.rows()}
        dense = pd.DataFrame([rows[i] for i in dense_ids])
        for i, (level, why) in asks.items():
            evidence = predicate(dense, pd.DataFrame([rows[c.cell_id] for c in cells[i]]))
            climbs[i] = record(climbs[i], level, evidence, why)
    rec = search_record(spec, configs, climbs, metric, max_drop, asked)
    store.set_meta(SEARCH_KEY, rec)
    (Path(store.run_dir) / SEARCH_FILE).write_text(json.dumps(rec, indent=2) + "\n")
    return SearchOutcome(asked, ran, rec)


def search_record(
    spec: SweepSpec,
    configs: list[Config],
    climbs: dict[Any, Climb],
    metric: str,
    max_drop: float,
    asked: int,
) -> dict[str, Any]:
    """The machine-readable account of a search: grid, rule, and per configuration each probe
    (level, verdict, why, drop and its interval) and where it stopped."""
    assert spec.search is not None
    return {
        "grid": {
            "low": spec.search.low,
            "high": spec.search.high,
            "resolution": spec.search.resolution,
        },  # fmt: skip
        "metric": f"val_{metric}",
        "max_drop": max_drop,
        "cells": asked,
        "configs": [
            {
                **config_name(configs[i]),
                "best": c.best,
                "outcome": c.outcome(),
                "probes": [p.__dict__ for p in c.probes],
            }
            for i, c in climbs.items()
        ],
    }
