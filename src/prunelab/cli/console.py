"""Terminal rendering for the CLI: rich progress bars and the end-of-sweep summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from prunelab.cli.loglines import LogLines
from prunelab.device import Placement
from prunelab.measure.metrics import METRICS
from prunelab.prune.allocation import ALLOCATIONS
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.structures import structure_names
from prunelab.recover.schedules import SCHEDULES
from prunelab.report import curve_labels
from prunelab.report.run import run_units
from prunelab.ship import FORMATS
from prunelab.sources.data import DATASETS
from prunelab.sources.models.zoo import model_names
from prunelab.sweep import SweepSpec, expand_cells, make_executor, run_sweep
from prunelab.sweep.context import ContextCache
from prunelab.sweep.store import DB_NAME, Store, load_results
from prunelab.tasks import TASKS
from prunelab.track import Tracker


def registries() -> dict[str, list[str]]:

    return {
        "methods": sorted([*CRITERIA.names(), *RECONSTRUCTORS.names()]),
        "allocations": ALLOCATIONS.names(),
        "structures": structure_names(),
        "schedules": SCHEDULES.names(),
        "metrics": METRICS.names(),
        "datasets": DATASETS.names(),
        "formats": FORMATS.names(),
        "models": model_names(),
        "tasks": TASKS.names(),
    }


def run_sweep_with_progress(
    spec: SweepSpec,
    out: Path,
    executor_name: str,
    workers: int,
    address: str | None,
    quiet: bool,
    tracker: Tracker | None = None,
    where: Placement | None = None,
) -> None:
    """Run the sweep on ``where`` (device, dtype) showing its progress: bars on a terminal,
    plain lines in a log (stderr not a terminal), nothing when ``quiet``; then the summary
    table."""
    console = Console(stderr=True)
    cells = expand_cells(spec)
    total = None if spec.search else len(cells)  # auto: as many cells as the search asks
    if quiet or console.is_terminal:
        view: Any = _Bars(console, total, disable=quiet)
    else:
        view = LogLines(total, _finished(out, cells), _primary_of(out), _echo_err)
    with view:
        contexts = ContextCache(None, on_step=view.on_dense_step, where=where)
        executor = make_executor(executor_name, workers, address=address, contexts=contexts)
        outcome = run_sweep(
            spec, out, executor, on_cell=lambda c, r: view.on_cell(c.label, r.duration_s, r.row),
            progress=view.on_step, contexts=contexts, tracker=tracker,
        )  # fmt: skip
    console.print(f"{outcome.ran} cells ran, {outcome.skipped} resumed from {out}")
    print_summary(out, console)


class _Bars:
    """Rich progress bars: cells done, and the phase now running (a terminal)."""

    def __init__(self, console: Console, total: int | None, disable: bool) -> None:
        self.total, self.done = total, 0
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=disable,
        )
        self.overall = self.bars.add_task("cells", total=total)
        self.current = self.bars.add_task("preparing (dense model, data)", total=None)

    def __enter__(self) -> _Bars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.bars.update(self.overall, completed=self.total or self.done, total=self.total
                             or self.done)  # fmt: skip
        self.bars.__exit__(*exc)

    def on_dense_step(self, done: int, steps: int) -> None:
        self.bars.update(
            self.current, description="training the dense model", completed=done, total=steps
        )

    def on_step(self, phase: str, done: int, steps: int) -> None:
        self.bars.update(self.current, description=phase, completed=done, total=steps)

    def on_cell(self, label: str, duration_s: float, row: dict[str, Any]) -> None:
        self.done += 1
        self.bars.advance(self.overall)
        self.bars.update(self.current, description=f"done: {label}", completed=0)


def _finished(out: Path, cells: list) -> int:
    """How many of ``cells`` the run directory holds already (a resumed sweep)."""
    if not (out / DB_NAME).exists():
        return 0
    with Store(out, create=False) as store:
        return len(store.finished_ids() & {c.cell_id for c in cells})


def _primary_of(out: Path) -> Callable[[], str | None]:
    """The run's primary metric, read from its task description once the run stored it."""
    known: list[str] = []

    def primary() -> str | None:
        if not known:
            with Store(out, create=False) as store:
                task = store.get_meta("task")
            if task is None:
                return None
            known.append(task.get("primary", "accuracy"))
        return known[0]

    return primary


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def print_summary(run_dir: Path, console: Console) -> None:
    """Level × method table: the task's primary and fidelity metrics, the achieved sparsity
    (zeros in the pruned layers) and the parameters physically removed (heads, neurons,
    channels cut out of the model), mean over seeds."""

    df = load_results(run_dir)
    df["curve"] = curve_labels(df)
    units = run_units(run_dir)
    with Store(run_dir, create=False) as store:
        original = store.get_meta("dense_metrics") or {}
    pruned = df[df["method"] != "dense"]
    cols = [units.primary, units.fidelity, "sparsity", "removed"]
    cols = [c for c in dict.fromkeys(cols) if c in df.columns]
    table = Table(title=f"{run_dir}: test metrics (mean over seeds)")
    for col in ("level", "method", *cols):
        table.add_column(col, justify="left" if col == "method" else "right")
    if units.primary in original:
        table.add_row("0", "original (as given)", *(_fmt(original.get(c)) for c in cols))
    dense = df[df["method"] == "dense"]
    if len(dense):
        table.add_row("0", "dense control (+fine-tune)", *(_fmt(dense[c].mean()) for c in cols))
    means = pruned.groupby(["level", "curve"])[cols].mean()
    for (level, curve), r in means.iterrows():
        table.add_row(f"{level:g}", curve, *(_fmt(r[c]) for c in cols))
    Console().print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
