"""Sweeps: a spec expands into independent cells, an executor runs them, a store keeps them."""

from prunelab.sweep.cell import Cell, CellResult, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.executors import make_executor
from prunelab.sweep.plan import expand_cells
from prunelab.sweep.run import SweepOutcome, run_sweep
from prunelab.sweep.spec import DataSpec, SweepSpec, load_spec, parse_levels, spec_from_dict

__all__ = [
    "Cell",
    "CellResult",
    "Context",
    "DataSpec",
    "SweepOutcome",
    "SweepSpec",
    "expand_cells",
    "load_spec",
    "make_executor",
    "parse_levels",
    "run_cell",
    "run_sweep",
    "spec_from_dict",
]
