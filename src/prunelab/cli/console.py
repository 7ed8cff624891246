"""Terminal rendering for the CLI: rich progress bars and the end-of-sweep summary table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from prunelab.sweep.store import Store, load_results
from prunelab.tasks import TASKS


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
    spec: SweepSpec, out: Path, executor_name: str, workers: int, address: str | None, quiet: bool
) -> None:
    console = Console(stderr=True)
    total = None if spec.search else len(expand_cells(spec))  # auto: as many as it asks for
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bars:
        overall = bars.add_task("cells", total=total)
        current = bars.add_task("preparing (dense model, data)", total=None)

        def on_dense_step(done: int, steps: int) -> None:
            bars.update(
                current, description="training the dense model", completed=done, total=steps
            )

        contexts = ContextCache(None, on_step=on_dense_step)
        executor = make_executor(executor_name, workers, address=address, contexts=contexts)

        def on_cell(cell, result) -> None:
            bars.advance(overall)
            bars.update(current, description=f"done: {cell.label}", completed=0)

        def on_step(phase: str, done: int, steps: int) -> None:
            bars.update(current, description=phase, completed=done, total=steps)

        outcome = run_sweep(
            spec, out, executor, on_cell=on_cell, progress=on_step, contexts=contexts
        )
        bars.update(overall, completed=outcome.total, total=outcome.total)
    console.print(f"{outcome.ran} cells ran, {outcome.skipped} resumed from {out}")
    print_summary(out, console)


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
